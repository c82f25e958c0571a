# Shared by the benchmark scripts (sourced, not run): messages, a work directory that is
# cleaned up with every process the script started, free ports, readiness and CPU accounting.
# The sourcing script sets BENCH_NAME, BENCH_TMP and KEEP first, and appends to `pids`.

say() { printf '%s\n' "$*" >&2; }
die() {
    say "$BENCH_NAME: $*"
    exit 1
}

# Creates $work (with $work/logs) and arranges that, on any exit, every pid in `pids` is
# stopped (TERM, then KILL after 5 s), logs are shown on failure, and $work is removed unless
# KEEP=1.
start_work_dir() {
    mkdir -p "$BENCH_TMP"
    work=$(mktemp -d "$BENCH_TMP/$BENCH_NAME.XXXXXX")
    mkdir -p "$work/logs"
    pids=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        for log in "$work"/logs/*.log; do
            [ -s "$log" ] || continue
            say "--- last lines of $log"
            tail -n 15 "$log" >&2
        done
    fi
    if [ "$KEEP" = 1 ]; then
        say "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}

# Prints N free loopback ports, asked of the OS (bound to port 0 together so they differ).
free_ports() { # n
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
' "$1"
}

# Writes a fresh cluster secret key to FILE (mode 0600) with `konnect secrets new-key`; every
# node of a bench cluster gets the same file as --secret-key-file.
konnect_key_file() { # konnect-binary file
    (umask 077 && "$1" secrets new-key --id bench >"$2") || die "konnect secrets new-key failed"
}

# Starts BINARY `serve --dev` on CPUS (taskset), data in DATA-DIR, $work/secret.key as its data
# key, on the ports in $k_peer, $k_admin, $k_status and $k_proxy, its output in LOG, with the
# EXTRA arguments; sets k_pid (also added to `pids`) and returns once its admin API listens.
start_konnect_dev() { # cpus binary data-dir log [extra-arg...]
    local cpus=$1 binary=$2 data=$3 log=$4
    shift 4
    taskset -c "$cpus" "$binary" serve --dev --data-dir "$data" \
        --secret-key-file "$work/secret.key" --peer-addr "127.0.0.1:$k_peer" \
        --admin-addr "127.0.0.1:$k_admin" --status-addr "127.0.0.1:$k_status" \
        --proxy-addr "127.0.0.1:$k_proxy" "$@" >"$log" 2>&1 &
    k_pid=$!
    pids+=("$k_pid")
    wait_admin_token "$data" "$k_pid"
    wait_port "$k_admin" "$k_pid" "konnect admin"
}

wait_port() { # port pid what
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || die "$3 exited while starting"
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$3 did not listen on 127.0.0.1:$1 within 30 s"
}

# Waits until a starting `konnect serve --dev` has written its admin token into DATA-DIR:
# its admin API is then ready to take it. SECONDS defaults to 30 (under valgrind, more).
wait_admin_token() { # data-dir pid [seconds]
    local limit=${3:-30}
    for _ in $(seq $((limit * 10))); do
        [ -s "$1/admin-token" ] && return 0
        kill -0 "$2" 2>/dev/null || die "konnect exited while starting"
        sleep 0.1
    done
    die "konnect wrote no admin token within $limit s"
}

# Waits until URL answers 200 (10 s at most; curl -k, so a test certificate will do), with the
# request header HEADER when given; WHAT names it in the error.
wait_200() { # url what [header]
    local code
    for _ in $(seq 100); do
        code=$(curl -sk -o /dev/null -m 2 -w '%{http_code}' ${3:+-H "$3"} "$1" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    die "$2 did not answer 200 at $1 within 10 s (last: $code)"
}

# Prints an HS256 JWT for a JwtProvider whose `hmac_secret` is SECRET: `iss` ISSUER, `sub`
# SUBJECT, issued now, expiring in 2100. Python's standard library signs it.
mint_hs256_jwt() { # issuer secret subject
    python3 - "$1" "$2" "$3" <<'EOF' || die "could not mint the JWT"
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
part = lambda d: b64(json.dumps(d, separators=(",", ":")).encode())
issuer, secret, subject = sys.argv[1], sys.argv[2], sys.argv[3]
signed = part({"alg": "HS256", "typ": "JWT"}) + "." + part(
    {"iss": issuer, "sub": subject, "iat": int(time.time()), "exp": 4102444800})
sig = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
print(signed + "." + b64(sig))
EOF
}

# CPU clock ticks (user + system, every thread, dead ones included) used so far by the pids.
cpu_ticks() {
    local total=0 stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
        rest=${stat##*) } # fields from 3 on; the command name may hold spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12])) # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}

# Installs Debian's package of each command not found (needs root): `need_packages nginx wrk`.
# /usr/sbin joins PATH, where nginx and haproxy live.
need_packages() {
    local missing=() p
    for p in "$@"; do
        command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "not found: ${missing[*]}: installing them from Debian"
        [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root; install them yourself"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
    fi
    PATH="$PATH:/usr/sbin"
}

# Builds the release binaries of the given cargo packages unless SKIP_BUILD=1 or BIN_DIR is set
# (binaries built elsewhere), then checks that the given binaries are in $bin:
# `build_release "konnect konnect-client" konnect konnectctl`. With PGO=1 the two binaries
# `konnect` and `konnectctl` come from the profile-guided build instead (deploy/pgo-build.sh,
# about 25 minutes; with SKIP_BUILD=1 the one it left in target/<host>/pgo), and $bin is
# set to its directory.
build_release() { # packages binary...
    local packages=$1 b
    shift
    if [ "${PGO:-0}" = 1 ]; then
        [ "$packages" = "konnect konnect-client" ] || die "PGO=1 builds konnect and konnectctl only, not $packages"
        if [ "${SKIP_BUILD:-0}" = 1 ]; then
            bin="${CARGO_TARGET_DIR:-$root/target}/$(rustc -vV | sed -n 's/^host: //p')/pgo"
        else
            say "building $* (profile-guided: deploy/pgo-build.sh)"
            bin=$("$root/deploy/pgo-build.sh" | tail -n 1) || die "deploy/pgo-build.sh failed"
        fi
    elif [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${BIN_DIR:-}" ]; then
        say "building $* (release)"
        # shellcheck disable=SC2086 # one argument per package
        (cd "$root" && cargo build --release $(printf -- '-p %s ' $packages))
    fi
    for b in "$@"; do
        [ -x "$bin/$b" ] || die "no $b in $bin"
    done
}

# Starts the upstream every bench proxies to: nginx, one worker on core $LOAD_CPU, answering
# 200 on 127.0.0.1:PORT, with keep-alive for the whole run; with STATUS_PORT, nginx's
# stub_status there (connections accepted). Sets up_pid.
start_upstream_nginx() { # port [status-port]
    local port=$1 status_port=${2:-} status=""
    if [ -n "$status_port" ]; then
        status="server { listen 127.0.0.1:$status_port; location / { stub_status; } }"
    fi
    mkdir -p "$work/upstream"
    cat >"$work/upstream/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/upstream/nginx.pid;
error_log $work/logs/upstream-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $work/upstream/body;
    proxy_temp_path $work/upstream/proxy;
    fastcgi_temp_path $work/upstream/fastcgi;
    uwsgi_temp_path $work/upstream/uwsgi;
    scgi_temp_path $work/upstream/scgi;
    server {
        listen 127.0.0.1:$port;
        location / { return 200; }
    }
    $status
}
CONF
    taskset -c "$LOAD_CPU" nginx -p "$work/upstream/" -e "$work/logs/upstream-error.log" \
        -c "$work/upstream/nginx.conf" >"$work/logs/upstream.log" 2>&1 &
    up_pid=$!
    pids+=("$up_pid")
    wait_port "$port" "$up_pid" "upstream nginx"
    if [ -n "$status_port" ]; then
        wait_port "$status_port" "$up_pid" "upstream nginx (status)"
    fi
}
