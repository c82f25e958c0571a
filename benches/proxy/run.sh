#!/usr/bin/env bash
# benches/proxy/run.sh: konnect's proxy against nginx and HAProxy on the same machine, in the
# same run: requests per second, p50/p99 latency and the proxy's CPU time per request through
# each proxy to one fast upstream (nginx `return 200`), and direct to that upstream; then again
# with 10,000 routes loaded into konnect, with konnect's resident memory (VmRSS) at 10 and at
# 10,000 routes.
#
# konnect is measured three ways in the same rounds: `konnect` (a route with no auth),
# `konnect-key` (a route with `auth: {key: true}`, wrk sending a Consumer's API key in
# `x-api-key`) and `konnect-jwt` (a route with `auth: {jwt: [bench-idp]}`, wrk sending an HS256
# JWT minted here for a JwtProvider with an `hmac_secret`); the summary gives their req/s and CPU
# per request as ratios to `konnect`: what authentication costs.
#
# Rate limits (LIMITS=1, the default) add four targets: `konnect-limit` (a route of the same node
# behind a `kind: RateLimit`, mode strict, key ip, window LIMIT_WINDOW (1 s), limit 100,000,000:
# nothing is ever refused, so its ratio to `konnect` is what a strict limit costs),
# `konnect-limit-half` (another route, strict, key ip, window 1s, limit = half of what plain
# konnect reached in a calibration run just before the rounds: about half the requests get 429),
# and the same two in nginx:
# `nginx-limit` (limit_req, rate 100000000r/s) and `nginx-limit-req` (limit_req at the same half
# rate, limit_req_status 429). Both nginx cases are locations of a second nginx placed like the
# first (one worker on PROXY_CPU). For the half targets the summary gives the total req/s, the
# admitted (non-429) req/s and the fraction refused; wrk counts every answer that is not 2xx/3xx
# ("Non-2xx or 3xx responses"), and a check before the rounds makes sure those are all 429.
#
# Placement: every proxy has one worker on one core (konnect under `taskset -c $PROXY_CPU`, so
# its async runtime starts one worker thread; nginx `worker_processes 1`; HAProxy `nbthread 1`),
# and the load generator (wrk -t1) and the upstream (nginx, one worker) share the other core.
#
# What it touches: builds `konnect` and `konnectctl` (release), installs Debian's nginx, haproxy
# and wrk with apt-get if one is missing (needs root; no service is enabled or started by this
# script: on these machines policy-rc.d stops the packages from starting theirs), starts the
# upstream, nginx, HAProxy and one `konnect serve --dev` in the foreground on free loopback
# ports, with configs, logs and data in one new directory under $BENCH_TMP (default /var/tmp),
# and removes both on exit, whatever the exit. It stops by itself: each measurement lasts
# DURATION seconds and every wait has a bound.
#
# Settings (environment variables):
#   ROUNDS=3          repetitions of each measurement; the order of the targets (six, ten with
#                     LIMITS=1) rotates by one each round (their cyclic order stays, so only
#                     ROUNDS=6, or 10, puts each first once)
#                     (the proxy core's time used by other processes during each run is recorded:
#                     `other ms/s` in the summary, to tell a disturbed run on a shared machine)
#   DURATION=10       seconds per measurement (wrk -d)
#   CONNECTIONS="64 1"  wrk connection counts (wrk -t1 -c N); 1 shows latency without queueing
#   ROUTES=10000      routes in konnect for the second half (0 skips it); applied in batches
#   BATCH=1000        routes per `konnectctl apply`
#   LOAD_CPU=0        core of wrk and the upstream
#   PROXY_CPU=1       core of the proxy under test
#   LIMITS=1          0 leaves out the four rate-limit targets (and the calibration run)
#   LIMIT_WINDOW=1    window of konnect-limit's never-reached limit, in seconds: with 1 every
#                     second starts with no units and the node asks Raft again; with 60 the
#                     allocation stays warm through a run (the half limit's window stays 1 s)
#   TARGETS=          a subset of the targets to measure, e.g. "konnect konnect-limit" (their
#                     order stays the cyclic one); empty: all of them
#   CALIBRATE=3       seconds of the calibration run (wrk -c<largest of CONNECTIONS> against plain
#                     konnect) whose req/s / 2 becomes the limit of the half targets (per 1 s);
#                     at fewer connections (1) konnect may not reach that limit at all
#   HALF_RATE=        set it (requests per second) to skip the calibration and use this figure
#   NGINX_BURST=auto  `burst=` of the nginx limits; auto = 10 ms of the rate (rate / 100), 0 = no
#                     burst. nginx's limit_req works in whole milliseconds: without a burst it
#                     admits at most one request per millisecond whatever the rate (measured:
#                     about 1,000 req/s of 176k offered, even at rate=100000000r/s), and with a
#                     burst of 1 ms of the rate it admitted 0.78 of the rate, with 2 ms 0.98,
#                     with 10 ms 1.00 (wrk -c64, 3 s, rate 12786r/s)
#   PROFILE=0         1: afterwards, count each proxy's syscalls and context switches per request
#                     (perf stat; at 64 connections, and at one for the plain targets), `perf record -g` konnect for 5 s under wrk for each of konnect,
#                     konnect-key and konnect-jwt (and konnect-limit, konnect-limit-half), and
#                     print the top of each `perf report --no-children` (needs perf: Debian's
#                     linux-perf)
#   BENCH_TMP=/var/tmp  where the work directory is made
#   KEEP=0            1 keeps the work directory (configs, logs, data, perf.data)
#   SKIP_BUILD=0      1 uses the binaries already in target/release
#   PGO=0             1 measures the profile-guided build (deploy/pgo-build.sh, about 25
#                     minutes; with SKIP_BUILD=1 the one already in target/<host>/pgo)
#   BIN_DIR=          takes konnect and konnectctl from there and builds nothing
#
# See benches/README.md for what the figures mean and their caveats.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-"64 1"}
ROUTES=${ROUTES:-10000}
BATCH=${BATCH:-1000}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
PROFILE=${PROFILE:-0}
LIMITS=${LIMITS:-1}
LIMIT_WINDOW=${LIMIT_WINDOW:-1}
TARGETS=${TARGETS:-}
CALIBRATE=${CALIBRATE:-3}
HALF_RATE=${HALF_RATE:-}
NGINX_BURST=${NGINX_BURST:-auto}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN_DIR:-"${CARGO_TARGET_DIR:-$root/target}/release"}

BENCH_NAME=proxy-bench
# shellcheck source=../lib.sh
source "$here/../lib.sh"

# --- tools ---

command -v python3 >/dev/null || die "python3 is needed (free ports, summary)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
need_packages nginx haproxy wrk
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then
    [ "$(id -u)" = 0 ] || die "PROFILE=1 needs perf (Debian's linux-perf)"
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y linux-perf
fi
[ "$(nproc)" -ge 2 ] || say "warning: $(nproc) core(s): wrk, upstream and proxy will share one"
nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
haproxy_version=$(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')
wrk_version=$(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p' || true)

build_release "konnect konnect-client" konnect konnectctl
konnect_version=$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)

# --- work directory and cleanup ---

start_work_dir

say "work directory: $work"

mapfile -t ports < <(free_ports 9)
up_port=${ports[0]}
nginx_port=${ports[1]}
haproxy_port=${ports[2]}
k_proxy=${ports[3]}
k_admin=${ports[4]}
k_peer=${ports[5]}
k_status=${ports[6]}
up_status_port=${ports[7]}
nl_port=${ports[8]} # the second nginx: limit_req (LIMITS=1)
nl_pid=""


# The processes of an nginx (its master and workers).
nginx_pids() { # master
    echo "$1"
    pgrep -P "$1" || true
}

# --- upstream: nginx, one worker, `return 200` ---

# Keep-alive connections are never closed for their request count: nginx closes one after 1000
# requests by default, which would make wrk and the proxies reconnect in the middle of a run.
mkdir -p "$work/nginx"
# (stub_status on a second port: the connections a proxy opened during a run.)
start_upstream_nginx "$up_port" "$up_status_port"

# Connections accepted by the upstream so far (nginx stub_status).
up_accepts() {
    curl -s -m 5 "http://127.0.0.1:$up_status_port/" | awk 'NR == 3 { print $1 }'
}

# --- nginx as the proxy: one worker, upstream keep-alive ---

cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream up {
        server 127.0.0.1:$up_port;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
taskset -c "$PROXY_CPU" nginx -p "$work/nginx/" -e "$work/logs/nginx-error.log" \
    -c "$work/nginx/nginx.conf" >"$work/logs/nginx.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_port "$nginx_port" "$nginx_pid" "nginx (proxy)"

# --- HAProxy: one thread, connections to the upstream reused ---

mkdir -p "$work/haproxy"
cat >"$work/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:$haproxy_port
    default_backend up
backend up
    server up 127.0.0.1:$up_port
EOF
taskset -c "$PROXY_CPU" haproxy -db -f "$work/haproxy/haproxy.cfg" >"$work/logs/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
wait_port "$haproxy_port" "$haproxy_pid" "haproxy"

# --- konnect: one node (--dev), one core ---

konnect_key_file "$bin/konnect" "$work/secret.key"
start_konnect_dev "$PROXY_CPU" "$bin/konnect" "$work/konnect" "$work/logs/konnect.log"
k_threads=$(ls "/proc/$k_pid/task" | wc -l)

ctl() { "$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" --token-file "$work/konnect/admin-token" "$@"; }

# The same path for every target and both halves: it is one of konnect's routes at 10 routes and
# at 10,000 (prefix routes match by segment, so /r5 is not a prefix of /r50). The auth targets
# request /key/r5 and /jwt/r5: routes /key and /jwt, which exist in both halves.
req_path=/r5
# Routes besides / and /r<i>: auth-key and auth-jwt (not counted in the `routes` figures).
auth_routes=2
# First half: 10 routes (`/` and /r1 ... /r9), all to the one Service.
{
    cat <<EOF
kind: Service
name: up
spec: {targets: [{url: "http://127.0.0.1:$up_port"}]}
---
kind: Route
name: bench
spec: {paths: ["/"], service: up}
EOF
    for i in $(seq 1 9); do
        printf -- '---\nkind: Route\nname: r%d\nspec: {paths: ["/r%d"], service: up}\n' "$i" "$i"
    done
} >"$work/routes-10.yaml"
ctl apply -f "$work/routes-10.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply failed"

# Authentication: a Consumer `bench` with an API key, a JwtProvider `bench-idp` with a shared
# secret, and one route for each credential, to the same Service. The JWT's `sub` is the
# consumer's name; it expires in 2100.
jwt_issuer=https://bench-idp.invalid
jwt_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
cat >"$work/auth.yaml" <<EOF
kind: Consumer
name: bench
spec: {description: "benches/proxy"}
---
kind: JwtProvider
name: bench-idp
spec: {issuer: "$jwt_issuer", hmac_secret: "$jwt_secret", algorithms: [HS256]}
---
kind: Route
name: auth-key
spec: {paths: ["/key"], service: up, auth: {key: true}}
---
kind: Route
name: auth-jwt
spec: {paths: ["/jwt"], service: up, auth: {jwt: [bench-idp]}}
EOF
ctl apply -f "$work/auth.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply of the auth resources failed"
api_key=$(ctl keys create --consumer bench --description "benches/proxy" 2>>"$work/logs/konnectctl.log") ||
    die "konnectctl keys create failed"
[ -n "$api_key" ] || die "konnectctl keys create printed no key"
jwt=$(mint_hs256_jwt "$jwt_issuer" "$jwt_secret" bench)
for url in "http://127.0.0.1:$up_port$req_path" "http://127.0.0.1:$nginx_port$req_path" \
    "http://127.0.0.1:$haproxy_port$req_path" "http://127.0.0.1:$k_proxy$req_path"; do
    wait_200 "$url" "target"
done
routes_now=10
say "up: upstream :$up_port, nginx :$nginx_port, haproxy :$haproxy_port, konnect :$k_proxy ($k_threads threads)"
say "versions: nginx $nginx_version, haproxy $haproxy_version, wrk $wrk_version, konnect $konnect_version"

# --- measuring ---

clk_tck=$(getconf CLK_TCK)
results="$work/results.txt"
rss_file="$work/rss.txt"
: >"$results"
: >"$rss_file"

# wrk prints exact figures (latency in microseconds) through this script instead of its rounded
# table: requests, every error counter, and percentiles from its histogram.
cat >"$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF


# The same as two figures: user ticks, then system ticks.
cpu_split() {
    local user=0 sys=0 stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || die "process $pid is gone"
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

rss_kb() { # pids: sum of VmRSS in KiB
    local total=0 kb
    for pid in "$@"; do
        kb=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status")
        total=$((total + kb))
    done
    echo "$total"
}

target_port() {
    case "$1" in
    direct) echo "$up_port" ;;
    nginx) echo "$nginx_port" ;;
    haproxy) echo "$haproxy_port" ;;
    konnect*) echo "$k_proxy" ;;
    nginx-limit | nginx-limit-req) echo "$nl_port" ;;
    esac
}

# The path each target is asked for: the auth targets' routes are /key and /jwt; the limited
# ones are /limit (nothing refused) and /half (about half refused), in konnect and in nginx.
target_path() {
    case "$1" in
    konnect-key) echo "/key$req_path" ;;
    konnect-jwt) echo "/jwt$req_path" ;;
    konnect-limit | nginx-limit) echo "/limit$req_path" ;;
    konnect-limit-half | nginx-limit-req) echo "/half$req_path" ;;
    *) echo "$req_path" ;;
    esac
}

# The credential header each target is sent (none for the others).
target_header() {
    case "$1" in
    konnect-key) echo "x-api-key: $api_key" ;;
    konnect-jwt) echo "Authorization: Bearer $jwt" ;;
    esac
}

# The processes whose CPU is the target's cost: the proxy's, or the upstream's when direct.
target_pids() {
    case "$1" in
    direct) nginx_pids "$up_pid" ;;
    nginx) nginx_pids "$nginx_pid" ;;
    nginx-limit | nginx-limit-req) nginx_pids "$nl_pid" ;;
    haproxy) echo "$haproxy_pid" ;;
    konnect*) echo "$k_pid" ;;
    esac
}

target_url() {
    echo "http://127.0.0.1:$(target_port "$1")$(target_path "$1")"
}

run_wrk() { # target conns seconds
    local header args=()
    header=$(target_header "$1")
    [ -z "$header" ] || args=(-H "$header")
    timeout $(($3 + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d"$3"s -s "$work/report.lua" \
        "${args[@]}" "$(target_url "$1")" 2>>"$work/logs/wrk.log"
}

# An auth target must answer 200 with its credential (within 10 s: the key and the routes reach
# the proxy's snapshot after the apply) and 401 without it; otherwise its figures would measure
# a refusal, or no auth at all.
check_auth() { # target
    local url code
    url=$(target_url "$1")
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' -H "$(target_header "$1")" "$url" || true)
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ] || die "$1: $url answered $code with the credential, not 200"
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
    [ "$code" = 401 ] || die "$1: $url answered $code without the credential, not 401"
    say "$1: $url answers 200 with the credential, 401 without"
}

# Raft entries konnect has written to ask for rate-limit units so far (its status /metrics).
grant_entries() {
    curl -s -m 5 "http://127.0.0.1:$k_status/metrics" |
        awk '$1 == "konnect_ratelimit_grant_entries_total" { n = $2 } END { printf "%d\n", n }'
}

# Busy clock ticks of one core so far (/proc/stat: user, nice, system, irq, softirq, steal).
core_busy() { # core
    awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

measure() { # target conns round
    local target=$1 conns=$2 round=$3 proc user_before sys_before user_after sys_after up_before up_after acc_before acc_after out line
    local grants_before=0 grants_after=0 core_before core_after own
    mapfile -t proc < <(target_pids "$target")
    [[ $target != konnect* ]] || grants_before=$(grant_entries)
    core_before=$(core_busy "$PROXY_CPU")
    read -r user_before sys_before < <(cpu_split "${proc[@]}")
    up_before=$(cpu_ticks $(nginx_pids "$up_pid"))
    acc_before=$(up_accepts)
    out=$(run_wrk "$target" "$conns" "$DURATION") || die "wrk failed against $target"
    read -r user_after sys_after < <(cpu_split "${proc[@]}")
    core_after=$(core_busy "$PROXY_CPU")
    up_after=$(cpu_ticks $(nginx_pids "$up_pid"))
    acc_after=$(up_accepts)
    [[ $target != konnect* ]] || grants_after=$(grant_entries)
    # The proxy core's busy time not spent by the target's processes (all of it for direct,
    # whose processes run on the load core): other work on the machine, per second.
    own=$((user_after - user_before + sys_after - sys_before))
    [ "$target" != direct ] || own=0
    line=$(grep '^requests=' <<<"$out") || die "no figures from wrk against $target: $out"
    # admitted_rps: answers that were 2xx or 3xx (wrk's err_status counts the others: 429 for
    # the limited targets, checked before the rounds); rejected = their share of all answers.
    line=$(python3 - "$line" "$((user_after - user_before))" "$((sys_after - sys_before))" \
        "$((up_after - up_before))" "$clk_tck" "$((core_after - core_before - own))" <<'EOF'
import sys
f = dict(kv.split("=", 1) for kv in sys.argv[1].split())
user, system, up_ticks, hz, other = (int(a) for a in sys.argv[2:7])
ticks = user + system
n = max(int(f["requests"]), 1)
secs = int(f["duration_us"]) / 1e6
errors = sum(int(v) for k, v in f.items() if k.startswith("err_"))
status = int(f["err_status"])
print(f"rps={n / secs:.0f} admitted_rps={(n - status) / secs:.0f} rejected={status / n:.4f} "
      f"p50_ms={int(f['p50_us']) / 1000:.3f} p90_ms={int(f['p90_us']) / 1000:.3f} "
      f"p99_ms={int(f['p99_us']) / 1000:.3f} max_ms={int(f['max_us']) / 1000:.3f} "
      f"cpu_us_per_req={ticks / hz * 1e6 / n:.1f} user_us_per_req={user / hz * 1e6 / n:.1f} "
      f"sys_us_per_req={system / hz * 1e6 / n:.1f} upstream_cpu_us_per_req={up_ticks / hz * 1e6 / n:.1f} "
      f"requests={n} errors={errors} other_ms_per_s={max(other, 0) / hz * 1000 / secs:.0f} "
      + " ".join(f"{k}={v}" for k, v in f.items() if k.startswith("err_")))
EOF
)
    # acc - 1: the status request itself is one accepted connection.
    line="target=$target routes=$routes_now conns=$conns round=$round $line upstream_conns_opened=$((acc_after - acc_before - 1))"
    line="$line grant_entries=$((grants_after - grants_before))"
    echo "$line" >>"$results"
    say "  $line"
}

record_rss() { # when
    local line
    line="routes=$routes_now when=$1 konnect_kb=$(rss_kb "$k_pid")"
    line="$line nginx_kb=$(rss_kb $(nginx_pids "$nginx_pid")) haproxy_kb=$(rss_kb "$haproxy_pid")"
    echo "$line" >>"$rss_file"
    say "  rss: $line"
}

measure_all() {
    local targets=(direct nginx haproxy konnect konnect-key konnect-jwt) order conns round t i n
    # With the limits, each limited target runs next to its unlimited one (nginx-limit after
    # nginx, konnect-limit just before konnect), so the ratios compare neighbours in time; the
    # six others keep their order.
    [ "$LIMITS" != 1 ] || targets=(direct nginx nginx-limit nginx-limit-req haproxy konnect-limit-half
        konnect-limit konnect konnect-key konnect-jwt)
    if [ -n "$TARGETS" ]; then
        local chosen=()
        for t in "${targets[@]}"; do
            [[ " $TARGETS " != *" $t "* ]] || chosen+=("$t")
        done
        [ "${#chosen[@]}" -gt 0 ] || die "TARGETS=\"$TARGETS\" names none of: ${targets[*]}"
        targets=("${chosen[@]}")
    fi
    n=${#targets[@]}
    say "warming up (1 s per target)"
    for t in "${targets[@]}"; do
        run_wrk "$t" 64 1 >/dev/null || die "wrk warm-up failed against $t"
    done
    say "measuring with $routes_now konnect routes: $ROUNDS rounds x connections {$CONNECTIONS} x ${targets[*]}, $DURATION s each"
    for round in $(seq "$ROUNDS"); do
        order=()
        for i in $(seq 0 $((n - 1))); do
            order+=("${targets[$(((i + round - 1) % n))]}")
        done
        for conns in $CONNECTIONS; do
            for t in "${order[@]}"; do
                measure "$t" "$conns" "$round"
            done
        done
    done
}

check_auth konnect-key
check_auth konnect-jwt

# What konnect burns doing nothing (Raft timers, health of its own listeners): it is in its CPU
# per request, and is small next to it.
k_idle0=$(cpu_ticks "$k_pid")
sleep 3
k_idle=$((($(cpu_ticks "$k_pid") - k_idle0) * 1000 / clk_tck / 3))
say "konnect idle CPU: $k_idle ms/s"

record_rss idle

# --- rate limits (LIMITS=1): calibration, konnect's two RateLimits, the second nginx ---

# Routes besides / and /r<i> made for the limits (/limit and /half; not counted in `routes`).
limit_routes=0
half_rate=na
nginx_burst_never=na
nginx_burst_half=na
never_rate=100000000

# wrk with a status census: how many answers of each status (run before the rounds only: a
# `response` hook costs wrk time per request).
cat >"$work/statuses.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
function done(summary, latency, requests)
  local all, parts = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do all[k] = (all[k] or 0) + v end
  end
  for k, v in pairs(all) do table.insert(parts, k .. "=" .. v) end
  table.sort(parts)
  io.write("statuses " .. table.concat(parts, " ") .. "\n")
end
EOF

# A limited target answers only 200 or 429 (a 5xx or a 404 would pass for a refusal in wrk's
# count); the never-hit targets should answer only 200 (a 429 there is reported, not fatal).
check_statuses() { # target conns
    local out census other refused
    out=$(timeout 40 taskset -c "$LOAD_CPU" wrk -t1 -c"$2" -d2s -s "$work/statuses.lua" \
        "$(target_url "$1")" 2>>"$work/logs/wrk.log") || die "wrk (status census) failed against $1"
    census=$(sed -n 's/^statuses //p' <<<"$out")
    [ -n "$census" ] || die "$1: no status census from wrk: $out"
    other=$(tr ' ' '\n' <<<"$census" | grep -v -e '^200=' -e '^429=' -e '^$' || true)
    [ -z "$other" ] || die "$1: answers other than 200 and 429 under load: $census"
    refused=$(tr ' ' '\n' <<<"$census" | sed -n 's/^429=//p')
    say "$1: status census under wrk -c$2 for 2 s: $census"
    case "$1" in
    konnect-limit | nginx-limit)
        [ -z "$refused" ] || say "warning: $1 refused $refused requests with a limit meant never to be hit" ;;
    *)
        [ -n "$refused" ] || say "warning: $1 refused nothing: its limit ($half_rate/s) is above what it reached" ;;
    esac
}

if [ "$LIMITS" = 1 ]; then
    max_conns=$(tr ' ' '\n' <<<"$CONNECTIONS" | sort -n | tail -n 1)
    if [ -n "$HALF_RATE" ]; then
        half_rate=$HALF_RATE
        say "half-rate limits: $half_rate requests/s (HALF_RATE)"
    else
        run_wrk konnect "$max_conns" 1 >/dev/null || die "wrk warm-up failed against konnect"
        out=$(run_wrk konnect "$max_conns" "$CALIBRATE") || die "wrk (calibration) failed against konnect"
        calib_rps=$(sed -n 's/^requests=\([0-9]*\) duration_us=\([0-9]*\).*/\1 \2/p' <<<"$out" |
            awk '{ printf "%d\n", $1 / ($2 / 1e6) }')
        [ -n "$calib_rps" ] && [ "$calib_rps" -gt 1 ] || die "calibration against konnect gave no figure: $out"
        half_rate=$((calib_rps / 2))
        say "calibration: plain konnect $calib_rps req/s at $max_conns connections for $CALIBRATE s: half-rate limits of $half_rate requests/s"
    fi
    # konnect: two more routes to the same Service, each behind its own strict RateLimit.
    cat >"$work/limits.yaml" <<EOF
kind: Route
name: limit
spec: {paths: ["/limit"], service: up}
---
kind: Route
name: half
spec: {paths: ["/half"], service: up}
---
kind: RateLimit
name: bench-never
spec: {applies_to: {route: limit}, key: ip, limit: $never_rate, window: ${LIMIT_WINDOW}s, mode: strict}
---
kind: RateLimit
name: bench-half
spec: {applies_to: {route: half}, key: ip, limit: $half_rate, window: 1s, mode: strict}
EOF
    ctl apply -f "$work/limits.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply of the rate limits failed"
    limit_routes=2
    # nginx: limit_req counts in milliseconds (see NGINX_BURST at the top).
    if [ "$NGINX_BURST" = auto ]; then
        nginx_burst_never=$((never_rate / 100))
        nginx_burst_half=$((half_rate / 100 > 1 ? half_rate / 100 : 1))
    else
        nginx_burst_never=$NGINX_BURST
        nginx_burst_half=$NGINX_BURST
    fi
    # nginx refuses `burst=0`: no burst is written as no `burst=` at all.
    burst_arg() { if [ "$1" = 0 ]; then echo ""; else echo " burst=$1"; fi; }
    mkdir -p "$work/nginx-limit"
    cat >"$work/nginx-limit/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx-limit/nginx.pid;
error_log $work/logs/nginx-limit-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $work/nginx-limit/body;
    proxy_temp_path $work/nginx-limit/proxy;
    fastcgi_temp_path $work/nginx-limit/fastcgi;
    uwsgi_temp_path $work/nginx-limit/uwsgi;
    scgi_temp_path $work/nginx-limit/scgi;
    limit_req_zone \$binary_remote_addr zone=never:10m rate=${never_rate}r/s;
    limit_req_zone \$binary_remote_addr zone=half:10m rate=${half_rate}r/s;
    limit_req_status 429;
    # Refusals are logged at this level, below error_log's: not written (konnect logs none).
    limit_req_log_level info;
    upstream up {
        server 127.0.0.1:$up_port;
        keepalive 128;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$nl_port;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location /limit {
            limit_req zone=never$(burst_arg "$nginx_burst_never") nodelay;
            proxy_pass http://up;
        }
        location /half {
            limit_req zone=half$(burst_arg "$nginx_burst_half") nodelay;
            proxy_pass http://up;
        }
    }
}
EOF
    taskset -c "$PROXY_CPU" nginx -p "$work/nginx-limit/" -e "$work/logs/nginx-limit-error.log" \
        -c "$work/nginx-limit/nginx.conf" >"$work/logs/nginx-limit.log" 2>&1 &
    nl_pid=$!
    pids+=("$nl_pid")
    wait_port "$nl_port" "$nl_pid" "nginx (limit_req)"
    # konnect's limits are live once its answers carry their RateLimit-Policy.
    for t in konnect-limit konnect-limit-half; do
        policy=""
        for _ in $(seq 100); do
            policy=$(curl -s -o /dev/null -m 2 -D - "$(target_url "$t")" | tr -d '\r' |
                sed -n 's/^ratelimit-policy: *//Ip' || true)
            [ -n "$policy" ] && break
            sleep 0.1
        done
        [ -n "$policy" ] || die "$t: $(target_url "$t") answered without a RateLimit-Policy within 10 s"
        say "$t: RateLimit-Policy $policy"
    done
    wait_200 "$(target_url nginx-limit)" "nginx-limit"
    for t in konnect-limit konnect-limit-half nginx-limit nginx-limit-req; do
        check_statuses "$t" "$max_conns"
    done
fi

measure_all
record_rss "after load"

apply_s=na
if [ "$ROUTES" -gt 10 ]; then
    say "loading $ROUTES routes into konnect in batches of $BATCH"
    start_ns=$(date +%s%N)
    first=10 # /r1 ... /r9 and / exist: the next route is /r10
    while [ "$first" -lt "$ROUTES" ]; do
        last=$((first + BATCH - 1))
        [ "$last" -lt "$ROUTES" ] || last=$((ROUTES - 1))
        python3 - "$first" "$last" >"$work/routes-batch.yaml" <<'EOF'
import sys
for i in range(int(sys.argv[1]), int(sys.argv[2]) + 1):
    print(f'---\nkind: Route\nname: r{i}\nspec: {{paths: ["/r{i}"], service: up}}')
EOF
        timeout 120 "$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" \
            --token-file "$work/konnect/admin-token" apply -f "$work/routes-batch.yaml" \
            >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply of routes r$first-r$last failed"
        first=$((last + 1))
    done
    apply_s=$(python3 -c "print(f'{($(date +%s%N) - $start_ns) / 1e9:.1f}')")
    routes_now=$(ctl get routes -o json | python3 -c '
import json, sys
text = sys.stdin.read().strip()
try:
    doc = json.loads(text)
    print(len(doc))
except ValueError:
    print("unreadable")
')
    [ "$routes_now" = "$((ROUTES + auth_routes + limit_routes))" ] ||
        die "konnect lists $routes_now routes, expected $ROUTES, $auth_routes auth routes and $limit_routes limited ones"
    routes_now=$ROUTES
    # Every path answers 200 through the `/` route, so the count above is the check that the
    # routes are in; this only checks that the proxy still answers. The new snapshot is in
    # within milliseconds of the last apply, and the 1 s pause below covers it.
    wait_200 "http://127.0.0.1:$k_proxy/r$((ROUTES - 1))" "konnect with $ROUTES routes"
    check_auth konnect-key
    check_auth konnect-jwt
    say "loaded $routes_now routes in $apply_s s"
    sleep 1
    record_rss idle
    measure_all
    record_rss "after load"
fi

if [ "$apply_s" = na ]; then
    load_note="no second half (ROUTES=$ROUTES)"
else
    load_note="$ROUTES routes applied in batches of $BATCH by konnectctl in $apply_s s"
fi
# Thread names at the end. The runtime starts one worker per core it may use (one, under
# taskset); tokio gives its blocking-pool threads (spawn_blocking: storage) the same name.
k_thread_names=$(cat /proc/"$k_pid"/task/*/comm | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }')

# Syscalls and context switches per request of each proxy under wrk -c64 (perf stat counts
# tracepoints, which costs little next to `perf trace`): the kernel side of the CPU per request.
syscall_profile() { # target connections
    local t=$1 conns=$2 proc pidlist out requests
    mapfile -t proc < <(target_pids "$t")
    pidlist=$(IFS=,; echo "${proc[*]}")
    perf stat -x, -o "$work/perf-stat-$t.csv" -e "$stat_events" -p "$pidlist" -- sleep 5 \
        >"$work/logs/perf-stat-$t.log" 2>&1 &
    local stat_pid=$!
    pids+=("$stat_pid")
    sleep 0.5
    out=$(run_wrk "$t" "$conns" 4) || die "wrk -c$conns failed against $t (syscall count)"
    wait "$stat_pid" || {
        say "perf stat failed for $t: $(tail -n 3 "$work/logs/perf-stat-$t.log")"
        return 0
    }
    requests=$(sed -n 's/^requests=\([0-9]*\).*/\1/p' <<<"$out")
    python3 - "$t" "$conns" "$requests" "$work/perf-stat-$t.csv" >>"$work/syscalls.txt" <<'PY'
import sys
target, conns, requests, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
counts = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) < 3 or line.startswith("#") or not f[0].replace(".", "").isdigit():
        continue
    counts[f[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all")] = float(f[0])
per = lambda k: counts.get(k, 0) / max(requests, 1)
detail = " ".join(f"{k}={per(k):.2f}" for k in sorted(counts, key=lambda k: -counts[k])
                  if k not in ("all", "context-switches") and per(k) >= 0.01)
print(f"  {target:8} -c{conns:<3} syscalls/req {per('all'):5.2f}  context switches/req {per('context-switches'):5.2f}  ({detail})")
PY
}

# Share of the samples per binary (kernel, the proxy, libc), on one line.
dso_split() { # perf.data
    perf report -i "$1" --stdio --no-children -g none --sort dso --percent-limit 1 2>/dev/null |
        awk '/%/ && !/^#/ { printf "%s%s %s", sep, $2, $1; sep = ", " }'
}

perf_report=""
perf_dso=""
if [ "$PROFILE" = 1 ]; then
    stat_events=raw_syscalls:sys_enter,context-switches
    known=$(perf list 2>/dev/null || true)
    for e in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait \
        epoll_ctl futex sched_yield accept4 close connect setsockopt getsockopt clock_gettime; do
        if grep -q "syscalls:sys_enter_$e\b" <<<"$known"; then stat_events="$stat_events,syscalls:sys_enter_$e"; fi
    done
    say "counting syscalls per request (perf stat, wrk -c64 for 4 s per proxy, and -c1 for the plain ones)"
    : >"$work/syscalls.txt"
    profiled=(konnect konnect-key konnect-jwt)
    [ "$LIMITS" != 1 ] || profiled+=(konnect-limit konnect-limit-half)
    counted=(direct nginx haproxy "${profiled[@]}")
    [ "$LIMITS" != 1 ] || counted+=(nginx-limit nginx-limit-req)
    for t in "${counted[@]}"; do
        syscall_profile "$t" 64
    done
    # One connection: each request wakes the proxy from its wait twice (the request, then the
    # target's answer), so what waiting and waking cost shows up here.
    for t in direct nginx haproxy konnect; do
        syscall_profile "$t" 1
    done
    # konnect without auth (perf.data), then with each credential (perf-konnect-key.data, ...)
    # and each rate limit (perf-konnect-limit.data, ...).
    for t in "${profiled[@]}"; do
        data="$work/perf.data"
        [ "$t" = konnect ] || data="$work/perf-$t.data"
        say "profiling $t: perf record -g for 5 s under wrk -c64"
        run_wrk "$t" 64 8 >/dev/null &
        wrk_bg=$!
        pids+=("$wrk_bg")
        sleep 1
        timeout 60 perf record -g -o "$data" -p "$k_pid" -- sleep 5 \
            >"$work/logs/perf-$t.log" 2>&1 || say "perf record failed: $(tail -n 3 "$work/logs/perf-$t.log")"
        wait "$wrk_bg" || true
        if [ -s "$data" ]; then
            report=$(perf report -i "$data" --stdio --no-children -g none --sort dso,sym \
                --percent-limit 0.7 2>/dev/null | grep -v '^#' | grep -v '^$' | head -45 || true)
            perf_report="$perf_report${perf_report:+

}$t:
$report"
            perf_dso="$perf_dso${perf_dso:+
}  $(printf '%-12s' "$t:") $(dso_split "$data")"
        fi
    done
    say "profiling nginx (for comparison): perf record for 5 s under wrk -c64"
    run_wrk nginx 64 8 >/dev/null &
    wrk_bg=$!
    pids+=("$wrk_bg")
    sleep 1
    mapfile -t proc < <(nginx_pids "$nginx_pid")
    timeout 60 perf record -o "$work/perf-nginx.data" -p "$(IFS=,; echo "${proc[*]}")" -- sleep 5 \
        >"$work/logs/perf-nginx.log" 2>&1 || say "perf record failed: $(tail -n 3 "$work/logs/perf-nginx.log")"
    wait "$wrk_bg" || true
    if [ -s "$work/perf-nginx.data" ]; then
        perf_dso="$perf_dso
  $(printf '%-12s' nginx:) $(dso_split "$work/perf-nginx.data")"
    fi
fi

# --- summary ---

cat <<EOF

proxy: konnect ($konnect_version) vs nginx $nginx_version and HAProxy $haproxy_version, wrk $wrk_version
machine: $(nproc) cores, $(uname -r), shared; everything on loopback; wrk -t1 and the upstream (nginx, 1 worker, return 200) on core $LOAD_CPU, the proxy on core $PROXY_CPU
proxies: nginx worker_processes 1 with upstream keepalive; haproxy nbthread 1 with http-reuse always; konnect --dev under taskset, access log off
auth: konnect-key = route /key with auth {key: true}, x-api-key; konnect-jwt = route /jwt with auth {jwt: [bench-idp]}, HS256 Bearer JWT; both to the same Service (+$auth_routes routes, not counted below)
each figure: median [min-max] of $ROUNDS rounds of $DURATION s, path $req_path (/key$req_path, /jwt$req_path); CPU = user+sys of the proxy's processes (of the upstream for direct) / requests, and the sys part (median);
up conns = connections the upstream accepted during the run (median), i.e. new connections the proxy (or wrk) opened
other ms/s = CPU time per second that other processes used on the proxy's core (core $PROXY_CPU) during the run: 0 on a quiet machine
konnect idle CPU (included in its CPU per request): $k_idle ms/s; threads at the end: $k_thread_names (on one core the runtime runs on the main thread, \`konnect\`; tokio-rt-worker are its blocking pool)
$load_note
EOF
if [ "$LIMITS" = 1 ]; then
    cat <<EOF
limits: konnect-limit = route /limit behind a strict RateLimit (key ip, window ${LIMIT_WINDOW}s, limit $never_rate); konnect-limit-half = route /half, the same with window 1s and limit $half_rate
        (+$limit_routes routes, not counted below); nginx-limit / nginx-limit-req = a second nginx (1 worker, core $PROXY_CPU), limit_req_zone \$binary_remote_addr
        rate=${never_rate}r/s burst=$nginx_burst_never nodelay / rate=${half_rate}r/s burst=$nginx_burst_half nodelay, limit_req_status 429
EOF
fi
python3 - "$results" "$rss_file" "$half_rate" <<'EOF'
import statistics
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1])]
half_rate = sys.argv[3]
targets = ("direct", "nginx", "haproxy", "konnect", "konnect-key", "konnect-jwt",
           "konnect-limit", "konnect-limit-half", "nginx-limit", "nginx-limit-req")
# Targets whose 429s are the point: wrk's non-2xx/3xx answers count as refusals, not errors.
halves = ("konnect-limit-half", "nginx-limit-req")

def group(target, routes, conns):
    return [r for r in rows if (r["target"], r["routes"], r["conns"]) == (target, routes, conns)]

def med(rs, key):
    return statistics.median(float(r[key]) for r in rs)

def cell(rs, key, fmt):
    v = [float(r[key]) for r in rs]
    if len(v) == 1:
        return fmt.format(v[0])
    return (fmt + " [" + fmt + "-" + fmt + "]").format(statistics.median(v), min(v), max(v))

phases = sorted({r["routes"] for r in rows}, key=int)
conns_list = sorted({r["conns"] for r in rows}, key=int, reverse=True)
header = (f"{'target':18} {'routes':>6} {'conns':>5}  {'req/s':>22}  {'p50 ms':>20}  {'p99 ms':>20}"
          f"  {'CPU us/req':>18}  {'of it sys':>9}  {'up conns':>8}  {'errors':>6}  {'other ms/s':>16}")
print()
print(header)
print("-" * len(header))
for conns in conns_list:
    for routes in phases:
        for t in targets:
            rs = group(t, routes, conns)
            if not rs:
                continue
            errors = sum(int(r["errors"]) - (int(r["err_status"]) if t in halves else 0) for r in rs)
            shown = routes if t.startswith("konnect") else "-"
            print(f"{t:18} {shown:>6} {conns:>5}  {cell(rs, 'rps', '{:.0f}'):>22}  {cell(rs, 'p50_ms', '{:.3f}'):>20}"
                  f"  {cell(rs, 'p99_ms', '{:.3f}'):>20}  {cell(rs, 'cpu_us_per_req', '{:.1f}'):>18}"
                  f"  {med(rs, 'sys_us_per_req'):>9.1f}  {med(rs, 'upstream_conns_opened'):>8.0f}  {errors:>6}"
                  f"  {cell(rs, 'other_ms_per_s', '{:.0f}'):>16}")
        print()

print("konnect against the others (medians of the same half of the run; req/s: higher is better for")
print("konnect; CPU: lower is); added latency = the proxy's p50/p99 minus direct's at the same connections")
for conns in conns_list:
    for routes in phases:
        k, n, h, d = (group(t, routes, conns) for t in ("konnect", "nginx", "haproxy", "direct"))
        if not (k and n and h and d):
            continue
        rps_n = med(k, "rps") / med(n, "rps")
        rps_h = med(k, "rps") / med(h, "rps")
        cpu_n = med(k, "cpu_us_per_req") / med(n, "cpu_us_per_req")
        cpu_h = med(k, "cpu_us_per_req") / med(h, "cpu_us_per_req")
        print(f"  {routes:>5} routes, {conns:>2} conns: req/s konnect/nginx {rps_n:.2f}, konnect/haproxy {rps_h:.2f};"
              f" CPU/req konnect/nginx {cpu_n:.2f}, konnect/haproxy {cpu_h:.2f}"
              f"   (goal req/s >= nginx: {'met' if rps_n >= 1.0 else 'NOT met'})")
        added = []
        for t, rs in (("nginx", n), ("haproxy", h), ("konnect", k)):
            a50 = med(rs, "p50_ms") - med(d, "p50_ms")
            a99 = med(rs, "p99_ms") - med(d, "p99_ms")
            added.append(f"{t} {a50:+.3f}/{a99:+.3f}")
        k99 = med(k, "p99_ms") - med(d, "p99_ms")
        print(f"      added p50/p99 ms: {', '.join(added)}"
              f"   (goal konnect p99 added < 1 ms: {'met' if k99 < 1.0 else 'NOT met'})")

print()
print("authentication against konnect without it (same half, same connections): per round, the auth")
print("target's figure / konnect's in the same round; median [min-max] of the rounds; RPS cost = 1 - req/s ratio")

def per_round(a, b, key):
    by_round = {r["round"]: float(r[key]) for r in b}
    v = [float(r[key]) / by_round[r["round"]] for r in a if r["round"] in by_round]
    return statistics.median(v), min(v), max(v)

for conns in conns_list:
    for routes in phases:
        k = group("konnect", routes, conns)
        for t in ("konnect-key", "konnect-jwt"):
            a = group(t, routes, conns)
            if not (a and k):
                continue
            rps = per_round(a, k, "rps")
            cpu = per_round(a, k, "cpu_us_per_req")
            goal = ""
            if t == "konnect-key":
                goal = f"   (goal key-auth req/s cost < 5%: {'met' if rps[0] > 0.95 else 'NOT met'})"
            print(f"  {routes:>5} routes, {conns:>2} conns: req/s {t}/konnect {rps[0]:.3f} [{rps[1]:.3f}-{rps[2]:.3f}]"
                  f" (cost {(1 - rps[0]) * 100:+.1f}%); CPU/req {cpu[0]:.3f} [{cpu[1]:.3f}-{cpu[2]:.3f}]"
                  f" ({med(a, 'cpu_us_per_req') - med(k, 'cpu_us_per_req'):+.1f} us){goal}")

if any(r["target"] in ("konnect-limit",) + halves for r in rows):
    print()
    print("rate limits: per round, the limited target's figure / the unlimited one's (konnect-limit/konnect,")
    print("nginx-limit/nginx), median [min-max] of the rounds; RPS cost = 1 - req/s ratio; p99 ratio = the")
    print("limited target's p99 / the unlimited one's (every request is admitted there; with a 1 s window the")
    print("node starts each second with no units and asks Raft again, LIMIT_WINDOW=60 keeps it warm)")
    for conns in conns_list:
        for routes in phases:
            for t, base in (("konnect-limit", "konnect"), ("nginx-limit", "nginx")):
                a, b = group(t, routes, conns), group(base, routes, conns)
                if not (a and b):
                    continue
                rps = per_round(a, b, "rps")
                p99 = per_round(a, b, "p99_ms")
                cpu = per_round(a, b, "cpu_us_per_req")
                refused = sum(int(r["err_status"]) for r in a)
                goal = ""
                if t == "konnect-limit":
                    goal = (f"   (goal req/s cost < 10%: {'met' if rps[0] > 0.90 else 'NOT met'};"
                            f" p99 within 10%: {'met' if p99[0] <= 1.10 else 'NOT met'})")
                print(f"  {routes:>5} routes, {conns:>2} conns: req/s {t}/{base} {rps[0]:.3f} [{rps[1]:.3f}-{rps[2]:.3f}]"
                      f" (cost {(1 - rps[0]) * 100:+.1f}%); p99 {p99[0]:.3f} [{p99[1]:.3f}-{p99[2]:.3f}]"
                      f" ({med(a, 'p99_ms') - med(b, 'p99_ms'):+.3f} ms); CPU/req {cpu[0]:.3f} [{cpu[1]:.3f}-{cpu[2]:.3f}]"
                      f" ({med(a, 'cpu_us_per_req') - med(b, 'cpu_us_per_req'):+.1f} us); refused {refused}{goal}")
                if t == "konnect-limit":
                    print(f"      Raft grant entries (asks for units) per run: {cell(a, 'grant_entries', '{:.0f}')}")
    print()
    print(f"half-rate limits ({half_rate} requests/s, half of plain konnect's calibration run): all answers,")
    print("admitted (2xx) and the share refused (429), median [min-max] of the rounds; admitted/limit = admitted")
    print("req/s / the limit's rate; p50/p99 are of all answers, refusals included")
    for conns in conns_list:
        for routes in phases:
            for t in halves:
                a = group(t, routes, conns)
                if not a:
                    continue
                ratio = [float(r["admitted_rps"]) / float(half_rate) for r in a]
                print(f"  {routes:>5} routes, {conns:>2} conns, {t:18}: req/s {cell(a, 'rps', '{:.0f}')},"
                      f" admitted {cell(a, 'admitted_rps', '{:.0f}')}, refused {cell(a, 'rejected', '{:.3f}')},"
                      f" admitted/limit {statistics.median(ratio):.3f} [{min(ratio):.3f}-{max(ratio):.3f}];"
                      f" p50 {cell(a, 'p50_ms', '{:.3f}')} p99 {cell(a, 'p99_ms', '{:.3f}')} ms;"
                      f" CPU/req {cell(a, 'cpu_us_per_req', '{:.1f}')} us"
                      + (f"; Raft grant entries per run {cell(a, 'grant_entries', '{:.0f}')}" if t.startswith("konnect") else ""))

print()
print("resident memory (VmRSS; nginx = master + worker)")
for line in open(sys.argv[2]):
    r = dict(kv.split("=", 1) for kv in line.replace("after load", "after_load").split())
    mb = lambda key: int(r[key]) / 1024
    print(f"  konnect {r['routes']:>5} routes, {r['when']:10}: konnect {mb('konnect_kb'):6.1f} MiB"
          f"   (nginx {mb('nginx_kb'):.1f} MiB, haproxy {mb('haproxy_kb'):.1f} MiB)")
rss = [dict(kv.split("=", 1) for kv in l.replace("after load", "after_load").split()) for l in open(sys.argv[2])]
top = max((r for r in rss), key=lambda r: int(r["routes"]))
if int(top["routes"]) >= 10000:
    peak = max(int(r["konnect_kb"]) for r in rss if r["routes"] == top["routes"]) / 1024
    print(f"  goal konnect RSS < 100 MB with {top['routes']} routes: {'met' if peak * 1.048576 < 100 else 'NOT met'} ({peak:.1f} MiB)")

print()
print("raw lines:")
for line in open(sys.argv[1]):
    print("  " + line.rstrip())
EOF
if [ -s "$work/syscalls.txt" ]; then
    printf '\nsyscalls per request under wrk -c64 and -c1, %s konnect routes (perf stat; direct = the upstream):\n' "$routes_now"
    cat "$work/syscalls.txt"
fi
if [ -n "$perf_dso" ]; then
    printf '\nwhere the CPU goes, by binary (perf record, wrk -c64, 5 s):\n%s\n' "$perf_dso"
fi
if [ -n "$perf_report" ]; then
    printf '\nperf report --no-children -g none --sort dso,sym (konnect without and with auth and limits, %s routes, wrk -c64, 5 s each; KEEP=1 keeps perf*.data):\n%s\n' \
        "$routes_now" "$perf_report"
fi
