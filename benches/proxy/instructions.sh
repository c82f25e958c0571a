#!/usr/bin/env bash
# benches/proxy/instructions.sh: user-space instructions per proxied request, konnect against
# nginx, both run under valgrind's callgrind in the same run, in front of the same upstream.
#
# Why: on a shared, noisy machine requests per second move by 10-15% between runs, while
# callgrind's instruction count is repeatable (the same binary and load give the same count
# whatever else the machine does). It counts the proxy's own user-space work only: not the
# kernel's (syscalls, TCP), which `run.sh`'s CPU-time figures include. Both proxies run about
# 50 times slower under valgrind, so latency and req/s here mean nothing.
#
# What it does: starts the upstream (nginx `return 200`), nginx as a proxy (`proxy_pass` with
# upstream keepalive, one worker, `master_process off` so valgrind sees the worker) and
# `konnect serve --dev` (one Service, routes `/` and /r1../r9, access log off), each proxy
# under `valgrind --tool=callgrind`; warms each up with wrk for WARMUP seconds, zeroes its
# counters, loads it with wrk (-t1 -c CONNECTIONS) for DURATION seconds, dumps the counters,
# and divides the instructions by the requests wrk completed. Prints both and the ratio; with
# TOP=N (default 25) also konnect's N functions with the most instructions (exclusive).
#
# konnect runs on one core (`taskset -c PROXY_CPU`), as in run.sh, so its runtime is the
# one-thread one it picks when one core is available.
#
# With CACHE_SIM=1, callgrind also simulates the caches and branch predictors (`--cache-sim=yes
# --branch-sim=yes`, the host's cache sizes) and both proxies' instruction-cache misses (I1mr),
# data-cache read and write misses (D1mr, D1mw) and mispredicted conditional and indirect
# branches (Bcm, Bim) per request are printed too. This VM exposes no hardware cache or branch
# counters to `perf`, and these explain a user-time gap larger than the instruction gap.
#
# With SITES=N, callgrind also records where each call comes from (`--dump-instr=yes`), and the
# N call sites of `SITES_OF` (default memcpy: the copies of large values moved through async
# calls) with the most instructions per request are printed, each with its source lines from
# `addr2line` (the inlined frames, innermost first). That is how the moves of the request and
# response were found (benches/README.md, "Figures after boxing the request and response").
#
# Settings: DURATION=10, WARMUP=3, CONNECTIONS=8, TOP=25, CACHE_SIM=0, SITES=0, SITES_OF=memcpy,
# BENCH_TMP=/var/tmp, KEEP=0 (1 keeps
# the callgrind files: open them with callgrind_annotate or kcachegrind), SKIP_BUILD=0, PGO=0
# (1: the profile-guided build, deploy/pgo-build.sh), BIN_DIR (binaries from there, nothing built),
# ROUTES=10 (more loads /r10.. up to that many routes into konnect, 1,000 per apply, all to the
# same Service, before the load: the cost of a large route table per request).
# Needs valgrind, nginx and wrk (installed with apt-get when missing, as root).
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-8}
TOP=${TOP:-25}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
ROUTES=${ROUTES:-10}
CACHE_SIM=${CACHE_SIM:-0}
SITES=${SITES:-0}
SITES_OF=${SITES_OF:-memcpy}
callgrind=(valgrind --tool=callgrind)
[ "$CACHE_SIM" = 1 ] && callgrind+=(--cache-sim=yes --branch-sim=yes)
[ "$SITES" -gt 0 ] && callgrind+=(--dump-instr=yes)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN_DIR:-"${CARGO_TARGET_DIR:-$root/target}/release"}

BENCH_NAME=proxy-instructions
# shellcheck source=../lib.sh
source "$here/../lib.sh"

command -v python3 >/dev/null || die "python3 is needed (free ports)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"
need_packages nginx wrk valgrind
[ "$SITES" -gt 0 ] && ! command -v addr2line >/dev/null && need_packages binutils
build_release "konnect konnect-client" konnect konnectctl
start_work_dir

read -r up_port nginx_port k_proxy k_admin k_status k_peer < <(free_ports 6 | xargs)
start_upstream_nginx "$up_port"

# --- nginx as the proxy, its one worker process under callgrind ---
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/logs/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream up { server 127.0.0.1:$up_port; keepalive 128; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
"${callgrind[@]}" --callgrind-out-file="$work/callgrind.nginx.%p" \
    nginx -p "$work/nginx/" -c "$work/nginx/nginx.conf" >"$work/logs/nginx.log" 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")

# --- konnect, under callgrind ---
konnect_key_file "$bin/konnect" "$work/secret.key"
taskset -c "$PROXY_CPU" "${callgrind[@]}" --callgrind-out-file="$work/callgrind.konnect.%p" \
    "$bin/konnect" serve --dev --data-dir "$work/konnect" --secret-key-file "$work/secret.key" \
    --peer-addr "127.0.0.1:$k_peer" --admin-addr "127.0.0.1:$k_admin" \
    --status-addr "127.0.0.1:$k_status" --proxy-addr "127.0.0.1:$k_proxy" \
    >"$work/logs/konnect.log" 2>&1 &
k_pid=$!
pids+=("$k_pid")
wait_admin_token "$work/konnect" "$k_pid" 120 # under valgrind
ctl() { "$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" --token-file "$work/konnect/admin-token" "$@"; }
{
    printf 'kind: Service\nname: up\nspec: {targets: [{url: "http://127.0.0.1:%s"}]}\n' "$up_port"
    printf -- '---\nkind: Route\nname: bench\nspec: {paths: ["/"], service: up}\n'
    for i in $(seq 1 9); do
        printf -- '---\nkind: Route\nname: r%d\nspec: {paths: ["/r%d"], service: up}\n' "$i" "$i"
    done
} >"$work/routes.yaml"
for _ in $(seq 60); do
    ctl apply -f "$work/routes.yaml" >>"$work/logs/konnectctl.log" 2>&1 && break
    sleep 1
done
first=10 # /r1 ... /r9 and / exist
while [ "$first" -lt "$ROUTES" ]; do
    last=$((first + 999))
    [ "$last" -lt "$ROUTES" ] || last=$((ROUTES - 1))
    for i in $(seq "$first" "$last"); do
        printf -- '---\nkind: Route\nname: r%d\nspec: {paths: ["/r%d"], service: up}\n' "$i" "$i"
    done >"$work/routes-batch.yaml"
    ctl apply -f "$work/routes-batch.yaml" >>"$work/logs/konnectctl.log" 2>&1 ||
        die "konnectctl apply of routes r$first-r$last failed (under valgrind)"
    first=$((last + 1))
done

ready() { # port pid what: until the proxy answers /r5 with 200
    for _ in $(seq 600); do
        kill -0 "$2" 2>/dev/null || die "$3 exited"
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/r5")" = 200 ] && return 0
        sleep 0.2
    done
    die "$3 did not answer /r5 with 200 within 120 s"
}
ready "$nginx_port" "$nginx_pid" nginx
ready "$k_proxy" "$k_pid" konnect

# measure NAME PORT PID: prints "NAME instructions requests"
measure() {
    local name=$1 port=$2 pid=$3 out requests before after
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$port/r5" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/r5")
    echo "$out" >>"$work/logs/wrk.log"
    callgrind_control -d "$name" "$pid" >/dev/null
    requests=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
    grep -q "Non-2xx" <<<"$out" && die "$name answered non-2xx: $out"
    [ -n "$requests" ] && [ "$requests" -gt 0 ] || die "wrk completed no request through $name"
    # The dump just written is the newest part file of this pid.
    local file
    file=$(ls -t "$work"/callgrind."$name".* | head -1)
    echo "$name $(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,) $requests $file"
}

# simulated NAME FILE REQUESTS: the simulated events per request (CACHE_SIM=1)
simulated() {
    callgrind_annotate "$2" 2>/dev/null | python3 -c '
import re, sys
name, requests = sys.argv[1], int(sys.argv[2])
text = sys.stdin.read()
events = re.search(r"^Events shown:\s+(.*)$", text, re.M).group(1).split()
totals = re.search(r"^(.*)PROGRAM TOTALS", text, re.M).group(1)
values = [int(v.replace(",", "")) for v in re.findall(r"([0-9,]+)(?:\s+\([^)]*\))?", totals)]
per = dict(zip(events, (v / requests for v in values)))
print(f"  {name:<8} " + "  ".join(f"{e} {per.get(e, 0):>6,.1f}" for e in ("I1mr", "D1mr", "D1mw", "Bcm", "Bim")))
' "$1" "$3"
}

read -r _ n_ins n_req n_file < <(measure nginx "$nginx_port" "$nginx_pid")
read -r _ k_ins n_kreq k_file < <(measure konnect "$k_proxy" "$k_pid")
ROUTES="$ROUTES" CONNECTIONS="$CONNECTIONS" python3 - "$n_ins" "$n_req" "$k_ins" "$n_kreq" <<'PY'
import sys
n_ins, n_req, k_ins, k_req = map(int, sys.argv[1:])
n, k = n_ins / n_req, k_ins / k_req
print(f"user-space instructions per proxied request (callgrind; wrk -c{__import__('os').environ.get('CONNECTIONS','8')}; konnect with {__import__('os').environ.get('ROUTES','10')} routes)")
print(f"  nginx    {n:>10,.0f}   ({n_ins:,} over {n_req:,} requests)")
print(f"  konnect  {k:>10,.0f}   ({k_ins:,} over {k_req:,} requests)")
print(f"  konnect/nginx {k / n:.2f}")
PY
if [ "$CACHE_SIM" = 1 ]; then
    echo "simulated misses per proxied request (callgrind --cache-sim --branch-sim):"
    simulated nginx "$n_file" "$n_req"
    simulated konnect "$k_file" "$n_kreq"
fi
if [ "$TOP" -gt 0 ]; then
    echo "konnect's top $TOP functions (exclusive instructions over the run):"
    callgrind_annotate --threshold=100 "$k_file" 2>/dev/null |
        sed -E 's#/root/.cargo/registry/src/index.crates.io-[0-9a-f]+/##; s#/rustc/[0-9a-f]+/library/##' |
        awk '/file:function/{on=1; next} on && NF' |
        # Rows of the threads' entry points (their whole run) are not functions' own work.
        awk '{p=$2; gsub(/[()%]/, "", p); if (p + 0 < 50) print}' | sed -n "1,${TOP}p" | cut -c1-160
fi
if [ "$SITES" -gt 0 ]; then
    echo "konnect's top $SITES call sites of $SITES_OF (per request; source lines innermost first):"
    python3 - "$k_file" "$SITES_OF" "$n_kreq" "$SITES" <<'PY' |
import collections, re, sys
path, callee, requests, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
names = {}
def name(rest):
    # callgrind compresses names: "(id) name" the first time, "(id)" after.
    m = re.match(r"\((\d+)\)(?: (.*))?", rest)
    if not m:
        return rest
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), m.group(1))
def position(token, previous):
    # Absolute ("0x4a0b"), relative to the line before ("+3", "-0x10") or the same ("*").
    if token == "*":
        return previous
    if token[0] in "+-":
        return previous + int(token, 0)
    return int(token, 0)
cfn, calls, addr, line = "", None, 0, 0
cost, count = collections.Counter(), collections.Counter()
for text in open(path, errors="replace"):
    if text.startswith("fn="):
        name(text[3:].strip())
    elif text.startswith("cfn="):
        cfn = name(text[4:].strip())
    elif text.startswith("calls="):
        calls = int(text[6:].split()[0])
    elif text[:1].isdigit() or text[:1] in "+-*":
        fields = text.split()
        try:
            addr, line = position(fields[0], addr), position(fields[1], line)
        except (ValueError, IndexError):
            continue
        if calls is not None:
            if callee in cfn:
                cost[addr] += int(fields[2])
                count[addr] += calls
            calls = None
total = sum(cost.values())
print(f"  all: {total / requests:,.0f} instructions in {sum(count.values()) / requests:.1f} calls")
for addr, c in cost.most_common(top):
    print(f"{addr:#x} {c / requests:.1f} {count[addr] / requests:.2f}")
PY
    while read -r addr instructions calls; do
        if [ "$addr" = all: ]; then
            echo "  $addr $instructions $calls"
            continue
        fi
        frames=$(addr2line -e "$bin/konnect" -i "$addr" 2>/dev/null |
            sed -E 's#^.*/(node|client)/src/#\1/src/#; s#^.*/(registry/src/[^/]+|library)/##; s# \(discriminator [0-9]+\)##' |
            paste -sd' ' -)
        printf '  %7s instr %5s calls  %s\n' "$instructions" "$calls" "$frames"
    done
fi
