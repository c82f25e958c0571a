#!/usr/bin/env bash
# deploy/pgo-build.sh: builds `konnect` and `konnectctl` with profile-guided optimisation (PGO):
# the binaries to run in production, and the ones `PGO=1 benches/proxy/run.sh` measures against
# nginx and HAProxy.
#
# Why: with whole-program optimisation konnect runs about as many instructions per proxied
# request as nginx, but misses the instruction cache about twice as often (callgrind's cache
# simulation, benches/proxy/instructions.sh CACHE_SIM=1): the hot path is spread over many
# crates' code. A profile of a real load tells LLVM which branches and functions are hot, so
# it lays the hot path out together and keeps cold code (errors, admin, start-up) out of it.
#
# What it does, in four steps:
#   1. builds both binaries instrumented (`-Cprofile-generate`, cargo profile `pgo-train`);
#   2. trains: an nginx upstream (`return 200`), the instrumented `konnect serve --dev`, and wrk
#      through it: plain routes at 64 and at 1 connection, a route behind an API key, one
#      behind a JWT (HS256), a rate-limited route (40,000 requests/s) that answers both 200
#      and 429, and HTTPS on the TLS listener; then h2load for HTTP/2 (h2c, and h2 over TLS),
#      and a 404 and a 401. Once with konnect on one core (the one-thread runtime) and once on
#      every core (the multi-thread runtime), TRAIN_SECONDS of wrk each;
#   3. merges the profiles with the `llvm-profdata` of rustc's own LLVM: rustup's `llvm-tools`
#      component (added when missing), or else Debian's `llvm-N` package of the same major
#      version (installed when missing, as root);
#   4. builds both again with that profile (`-Cprofile-use`, cargo profile `pgo`).
# The result is in target/<host>/pgo/ (the script prints the path). To ship it in the image:
# docs/deploy.md, "Profile-guided build".
#
# What the profile leaves out runs as it would in a plain release build, optimised for size
# where LLVM sees it as cold: websockets, response caching, transformations, the AI gateway
# and most of the admin API are not in the training load.
#
# Settings: TRAIN_SECONDS=12, LOAD_CPU=0 (wrk and the upstream), PROXY_CPU=1 (konnect in the
# one-core half), BENCH_TMP=/var/tmp, KEEP=0 (1 keeps the work directory: logs).
# Needs: nginx, wrk, h2load, curl and openssl (nginx, wrk and h2load's nghttp2-client installed
# with apt-get when missing, as root), python3 (free ports, the JWT). Takes about 25 minutes
# on 2 cores from scratch (two release builds with fat LTO); a second run reuses the
# instrumented build and takes about 13.
set -euo pipefail

TRAIN_SECONDS=${TRAIN_SECONDS:-12}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}

BENCH_NAME=pgo-build
# shellcheck source=../benches/lib.sh
source "$root/benches/lib.sh"

command -v python3 >/dev/null || die "python3 is needed (free ports)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"
command -v openssl >/dev/null || die "openssl is needed (the training's TLS certificate)"
need_packages nginx wrk
command -v h2load >/dev/null || need_packages nghttp2-client

# The profile format is LLVM's and changes between its major versions: the merger must be the
# one of the LLVM that rustc was built with. rustup ships exactly that one (`llvm-tools`);
# without rustup, or where its server cannot be reached, Debian's package of the same major
# version reads the same format.
# (rustc as cargo runs it, in the workspace: a rustup override there would pick its toolchain.)
rustc_here() { (cd "$root" && rustc "$@"); }
host=$(rustc_here -vV | sed -n 's/^host: //p')
llvm_major=$(rustc_here -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$host" ] && [ -n "$llvm_major" ] || die "could not read the host and LLVM version from rustc -vV"
profdata="$(rustc_here --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ] && command -v rustup >/dev/null; then
    say "adding rustup's llvm-tools component (llvm-profdata of rustc's LLVM $llvm_major)"
    (cd "$root" && rustup component add llvm-tools) >&2 || say "rustup could not add llvm-tools"
fi
if [ ! -x "$profdata" ]; then
    profdata=llvm-profdata-$llvm_major
    if ! command -v "$profdata" >/dev/null; then
        say "not found: $profdata (rustc uses LLVM $llvm_major): installing Debian's llvm-$llvm_major"
        [ "$(id -u)" = 0 ] || die "installing llvm-$llvm_major needs root; install it yourself"
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "llvm-$llvm_major"; } >&2 ||
            die "could not install llvm-$llvm_major: its llvm-profdata must match rustc's LLVM $llvm_major"
    fi
fi

start_work_dir

# Fixed paths, so that a second run reuses the instrumented build (the path is part of its
# RUSTFLAGS, which cargo fingerprints).
profiles="$target_dir/pgo-profiles"
raw="$profiles/raw"
mkdir -p "$raw"
rm -f "$raw"/*.profraw

# `--target` keeps RUSTFLAGS off build scripts and proc macros (host code, not shipped).
cargo_build() { # profile rustflag
    (cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} $2" cargo build --locked --target "$host" \
        --profile "$1" -p konnect -p konnect-client)
}

say "1/4 building the instrumented binaries (cargo profile pgo-train)"
cargo_build pgo-train "-Cprofile-generate=$raw"
train_bin="$target_dir/$host/pgo-train"

say "2/4 training"
read -r up_port k_proxy k_tls k_admin k_status k_peer < <(free_ports 6 | xargs)
start_upstream_nginx "$up_port"
konnect_key_file "$train_bin/konnect" "$work/secret.key"
# A certificate for `localhost` (the name wrk and h2load send), and an HS256 JWT for a
# JwtProvider with a random secret (`sub` = the consumer, expiring in 2100).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -keyout "$work/tls.key" -out "$work/tls.crt" \
    >>"$work/logs/openssl.log" 2>&1 || die "openssl could not make the certificate"
jwt_issuer=https://pgo-train.invalid
jwt_secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
jwt=$(mint_hs256_jwt "$jwt_issuer" "$jwt_secret" train)

# konnectctl's own profile is not wanted: its runs write theirs into the work directory.
ctl() {
    LLVM_PROFILE_FILE="$work/ctl-%p.profraw" "$train_bin/konnectctl" \
        --endpoint "http://127.0.0.1:$k_admin" --token-file "$work/konnect/admin-token" "$@"
}

train_wrk() { # conns seconds url [header]
    local args=()
    [ -z "${4:-}" ] || args=(-H "$4")
    timeout $(($2 + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$1" -d"$2"s "${args[@]}" "$3" \
        >>"$work/logs/wrk.log" 2>&1 || die "wrk failed on $3"
}

# HTTP/2 with h2load: 4 connections, 10 streams each, N requests, every answer a 2xx.
train_h2() { # requests url
    local out
    out=$(timeout 120 taskset -c "$LOAD_CPU" h2load -n "$1" -c 4 -m 10 "$2" 2>&1) || die "h2load failed on $2: $out"
    grep -q "status codes: $1 2xx" <<<"$out" || die "h2load on $2: not every answer was a 2xx: $out"
}

# One node, configured the first time, loaded, then stopped with SIGTERM so that it writes its
# profile on the way out (the profiler runtime writes it at exit).
train_once() { # name taskset-cpus
    local name=$1 cpus=$2 k_pid
    start_konnect_dev "$cpus" "$train_bin/konnect" "$work/konnect" "$work/logs/konnect-$name.log" \
        --proxy-tls-addr "127.0.0.1:$k_tls"
    if [ ! -s "$work/api-key" ]; then
        {
            cat <<EOF
kind: Service
name: up
spec: {targets: [{url: "http://127.0.0.1:$up_port"}]}
---
kind: Route
name: root
spec: {paths: ["/"], methods: [GET], service: up}
---
kind: Consumer
name: train
spec: {description: "deploy/pgo-build.sh"}
---
kind: Route
name: auth-key
spec: {paths: ["/key"], service: up, auth: {key: true}}
---
kind: JwtProvider
name: train-idp
spec: {issuer: "$jwt_issuer", hmac_secret: "$jwt_secret", algorithms: [HS256]}
---
kind: Route
name: auth-jwt
spec: {paths: ["/jwt"], service: up, auth: {jwt: [train-idp]}}
---
kind: Route
name: limited
spec: {paths: ["/limited"], service: up}
---
kind: RateLimit
name: train-limit
spec: {applies_to: {route: limited}, key: ip, limit: 40000, window: 1s, mode: strict}
EOF
            for i in $(seq 1 9); do
                printf -- '---\nkind: Route\nname: r%d\nspec: {paths: ["/r%d"], service: up}\n' "$i" "$i"
            done
            printf -- '---\nkind: Certificate\nname: localhost\nspec:\n  snis: [localhost]\n  cert_pem: |\n'
            sed 's/^/    /' "$work/tls.crt"
            printf '  key_pem: |\n'
            sed 's/^/    /' "$work/tls.key"
        } >"$work/config.yaml"
        ctl apply -f "$work/config.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply failed"
        ctl keys create --consumer train --description "deploy/pgo-build.sh" >"$work/api-key" \
            2>>"$work/logs/konnectctl.log" || die "konnectctl keys create failed"
    fi
    local key_header plain="http://127.0.0.1:$k_proxy" tls="https://localhost:$k_tls"
    key_header="x-api-key: $(<"$work/api-key")"
    wait_200 "$plain/r5" konnect
    wait_200 "$plain/key/r5" konnect "$key_header"
    wait_200 "$plain/jwt/r5" konnect "Authorization: Bearer $jwt"
    wait_200 "$tls/r5" "konnect (TLS)"
    local sixth=$(((TRAIN_SECONDS + 5) / 6))
    say "  konnect on cpus $cpus: wrk for $((sixth * 6)) s, h2load for HTTP/2"
    train_wrk 64 "$sixth" "$plain/r5"
    train_wrk 1 "$sixth" "$plain/r5"
    train_wrk 16 "$sixth" "$plain/key/r5" "$key_header"
    train_wrk 16 "$sixth" "$plain/jwt/r5" "Authorization: Bearer $jwt"
    train_wrk 16 "$sixth" "$plain/limited"
    train_wrk 16 "$sixth" "$tls/r5"
    train_h2 100000 "$plain/r5"
    train_h2 100000 "$tls/r5"
    # Refusals: no route for the method (`/` takes GET only: 404), a missing credential (401).
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$plain/nothing")
    [ "$code" = 404 ] || die "POST /nothing: expected 404, got $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' "$plain/key/r5")
    [ "$code" = 401 ] || die "/key/r5 without a key: expected 401, got $code"
    kill -TERM "$k_pid"
    wait "$k_pid" || die "konnect ($name) did not exit cleanly after SIGTERM"
}

train_once one-core "$PROXY_CPU"
train_once all-cores "0-$(($(nproc) - 1))"

say "3/4 merging the profiles with $profdata ($("$profdata" --version | sed -n 's/^ *LLVM version //p'))"
shopt -s nullglob
files=("$raw"/*.profraw)
[ "${#files[@]}" -gt 0 ] || die "the training wrote no profile into $raw"
"$profdata" merge -o "$profiles/merged.profdata" "${files[@]}" || die "$profdata merge failed"
# Named by its content: a new profile changes RUSTFLAGS, so cargo rebuilds with it.
sum=$(sha256sum "$profiles/merged.profdata" | cut -c1-16)
profile="$profiles/konnect-$sum.profdata"
rm -f "$profiles"/konnect-*.profdata
mv "$profiles/merged.profdata" "$profile"

say "4/4 building with the profile (cargo profile pgo)"
cargo_build pgo "-Cprofile-use=$profile"
out="$target_dir/$host/pgo"
say "built: $out/konnect and $out/konnectctl (profile $profile)"
echo "$out"
