#!/usr/bin/env bash
# benches/proxy/rss-growth.sh: does konnect's memory stay flat under load when nobody scrapes
# /metrics? Starts the upstream (nginx `return 200`) and `konnect serve --dev` on one core
# (route `/`), warms up, then runs ROUNDS rounds of wrk (-t1 -c64, SECONDS_PER_ROUND each)
# and prints konnect's VmRSS after each. A flat line is the expected answer; a leak shows as
# a steady climb per round (before the metrics upkeep thread: about 15 MiB per 750,000
# requests, from histogram samples kept until a scrape).
#
# Settings: ROUNDS=3, SECONDS_PER_ROUND=10, BENCH_TMP=/var/tmp, KEEP=0, SKIP_BUILD=0,
# PGO=0 (1: the profile-guided build, deploy/pgo-build.sh), BIN_DIR (binaries from there,
# nothing built), LOAD_CPU=0, PROXY_CPU=1. Needs nginx and wrk (installed with apt-get when
# missing, as root).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=${BIN_DIR:-"${CARGO_TARGET_DIR:-$root/target}/release"}

BENCH_NAME=proxy-rss-growth
# shellcheck source=../lib.sh
source "$here/../lib.sh"

command -v python3 >/dev/null || die "python3 is needed (free ports)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"
need_packages nginx wrk
build_release "konnect konnect-client" konnect konnectctl
start_work_dir

read -r up_port k_proxy k_admin k_status k_peer < <(free_ports 5 | xargs)
start_upstream_nginx "$up_port"
konnect_key_file "$bin/konnect" "$work/secret.key"
start_konnect_dev "$PROXY_CPU" "$bin/konnect" "$work/konnect" "$work/logs/konnect.log"
printf 'kind: Service\nname: up\nspec: {targets: [{url: "http://127.0.0.1:%s"}]}\n---\nkind: Route\nname: bench\nspec: {paths: ["/"], service: up}\n' \
    "$up_port" >"$work/routes.yaml"
"$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" --token-file "$work/konnect/admin-token" \
    apply -f "$work/routes.yaml" >"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply failed"
wait_200 "http://127.0.0.1:$k_proxy/" konnect

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$k_pid/status"; }
taskset -c "$LOAD_CPU" wrk -t1 -c64 -d3s "http://127.0.0.1:$k_proxy/" >/dev/null
echo "konnect VmRSS after warm-up: $(rss_kib) KiB"
for round in $(seq "$ROUNDS"); do
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${SECONDS_PER_ROUND}s" "http://127.0.0.1:$k_proxy/")
    requests=$(echo "$out" | sed -n 's/^ *\([0-9]*\) requests in.*/\1/p')
    echo "konnect VmRSS after round $round ($requests requests): $(rss_kib) KiB"
done
