#!/usr/bin/env bash
# benches/usage-ledger/run.sh: the AI cost ledger's capacity on this machine, stage by stage,
# with the node's real code, against the goal of 50,000 usage records per second through a
# three-node cluster:
#
#   1. wal:  C concurrent appenders make ~250-byte usage records durable through the node's
#            `UsageWal` (group commit), side by side with a naive logger doing write + fdatasync
#            per record and SQLite (WAL mode, synchronous=FULL, one transaction per record), on
#            the disk under $BENCH_TMP: records/s and fsyncs/s.
#   2. ship: a three-node `konnect serve` cluster fed `ShipUsage` commands through the leader's
#            peer port (`Peer.Forward`, as followers' shippers send them) by K shippers, each a
#            fake node (id 1000+k, its own incarnation) with consecutive sequence numbers, in
#            shipments of BATCH records, on a fresh cluster per measurement: records applied per
#            second, `Usage.QuerySpend` checked on every node: none counts more than the records
#            acknowledged and the leader counts exactly that many (exactly once), and whether
#            each follower gets there too.
#   3. e2e:  a fresh three-node cluster with an AI route (key auth) to a fake OpenAI provider
#            (nginx answering a fixed chat completion with a usage block), wrk on all three
#            proxies for DURATION s: AI calls/s completed, records appended and shipped (node
#            metrics), WAL fsyncs/s (fdatasync calls of the `usage-wal-writer` threads, counted
#            with perf), the ship lag during the load and the drain after it. Checks: each
#            round's calls counted are at least the calls wrk saw complete (and at most those
#            plus the ones in flight at its stop), and at the end, with the nodes stopped, the
#            ledger's total equals the records their WALs hold (read by the node's own recovery
#            code).
#
# What it touches: builds `konnect`, `konnectctl`, `raft-writes` and `usage-ledger` (release,
# with the `sqlite` feature) unless SKIP_BUILD=1; installs Debian's nginx and wrk with apt-get if
# one is missing (needs root); starts the nodes, nginx and wrk in the foreground on free
# loopback ports with their data in one new directory under $BENCH_TMP, and removes both on
# exit, whatever the exit. Every run and wait has a bound.
#
# Settings (environment variables):
#   ROUNDS=3               repetitions of each measurement (median and min-max are printed)
#   STAGES="wal ship e2e"  which stages to run
#   WAL_DURATION=5         seconds per WAL measurement
#   APPENDERS="1 64 1024"  concurrent appenders in the WAL stage
#   WAL_BACKENDS="konnect naive sqlite"
#   SHIP_DURATION=10       seconds per ship measurement
#   SHIPPERS="1 8"         concurrent shippers (fake nodes) in the ship stage
#   BATCHES="1000 5000"    records per shipment (the node ships up to 2,000, 512 KiB, per entry)
#   SETTLE_WAIT=30         seconds each follower gets, after a ship run or an e2e round, to count
#                          what the leader counts
#   CONSUMERS=100          distinct consumers in the records (spend rows touched per shipment)
#   DURATION=10            seconds of each end-to-end round (wrk -d)
#   CONNECTIONS=64         wrk connections per node in the end-to-end stage (wrk -t1)
#   PERF=auto              count fdatasync/fsync calls with perf (auto: when perf works; 0: never)
#   BENCH_TMP=/var/tmp     where the work directory is made (the data is on that disk)
#   KEEP=0                 1 keeps the work directory
#   SKIP_BUILD=0           1 uses the binaries already in target/release
#
# See benches/README.md for what the figures mean and their caveats.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
STAGES=${STAGES:-"wal ship e2e"}
WAL_DURATION=${WAL_DURATION:-5}
APPENDERS=${APPENDERS:-"1 64 1024"}
WAL_BACKENDS=${WAL_BACKENDS:-"konnect naive sqlite"}
SHIP_DURATION=${SHIP_DURATION:-10}
SETTLE_WAIT=${SETTLE_WAIT:-30}
SHIPPERS=${SHIPPERS:-"1 8"}
BATCHES=${BATCHES:-"1000 5000"}
CONSUMERS=${CONSUMERS:-100}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
PERF=${PERF:-auto}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

BENCH_NAME=usage-ledger
# shellcheck source=../lib.sh
source "$here/../lib.sh"

has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

# --- tools ---

command -v python3 >/dev/null || die "python3 is needed (free ports, summary)"
command -v curl >/dev/null || die "curl is needed (metrics, readiness checks)"
if has_stage e2e; then
    need_packages nginx wrk
fi

if [ "$SKIP_BUILD" != 1 ]; then
    say "building konnect, konnectctl, raft-writes and usage-ledger (release, feature sqlite)"
    (cd "$root" && cargo build --release -p konnect -p konnect-client -p raft-writes-bench \
        --features raft-writes-bench/sqlite)
fi
for b in konnect konnectctl raft-writes usage-ledger; do
    [ -x "$bin/$b" ] || die "no $b in $bin"
done
konnect_version=$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)

start_work_dir
fs_type=$(df -T "$work" | awk 'NR == 2 { print $2 }')
say "work directory: $work (file system: $fs_type)"
results="$work/results.txt"
: >"$results"
clk_tck=$(getconf CLK_TCK)

use_perf=0
if [ "$PERF" != 0 ] && command -v perf >/dev/null &&
    perf stat -x, -e syscalls:sys_enter_fdatasync -- true >/dev/null 2>&1; then
    use_perf=1
elif [ "$PERF" = 1 ]; then
    die "PERF=1 but perf cannot count syscalls:sys_enter_fdatasync here (install linux-perf; run as root)"
fi
say "fsync counting with perf: $([ "$use_perf" = 1 ] && echo yes || echo no)"

# The 1-minute load average: how busy the shared machine was before a measurement (everything on
# it, this script's own processes included).
load1() { cut -d' ' -f1 /proc/loadavg; }

# Sums the counts of a perf stat -x, output file (one event or all of them).
perf_sum() { # file [event]
    awk -F, -v ev="${2:-}" '$1 ~ /^[0-9]+$/ && (ev == "" || index($3, ev)) { s += $1 } END { print s + 0 }' "$1"
}

# --- stage 1: the WAL ---

stage_wal() {
    say "WAL stage: $ROUNDS rounds x appenders {$APPENDERS} x {$WAL_BACKENDS}, $WAL_DURATION s each, on $fs_type"
    local round appenders backend line n=0 perf_out os load1
    for round in $(seq "$ROUNDS"); do
        for appenders in $APPENDERS; do
            for backend in $WAL_BACKENDS; do
                n=$((n + 1))
                load1=$(load1)
                local cmd=("$bin/usage-ledger" wal --backend "$backend" --dir "$work/wal-$n"
                    --appenders "$appenders" --duration-secs "$WAL_DURATION" --consumers "$CONSUMERS")
                perf_out="$work/perf-wal-$n.txt"
                if [ "$use_perf" = 1 ]; then
                    line=$(timeout $((WAL_DURATION + 60)) perf stat -x, -o "$perf_out" \
                        -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync -- "${cmd[@]}" \
                        2>>"$work/logs/usage-ledger.log") ||
                        die "usage-ledger wal failed ($backend, $appenders appenders); see its log below"
                    # Every fdatasync/fsync of the process, its warm-up and setup included.
                    os="os_fsyncs=$(perf_sum "$perf_out")"
                else
                    line=$(timeout $((WAL_DURATION + 60)) "${cmd[@]}" 2>>"$work/logs/usage-ledger.log") ||
                        die "usage-ledger wal failed ($backend, $appenders appenders); see its log below"
                    os="os_fsyncs=na"
                fi
                line="$line round=$round $os load1_before=$load1"
                echo "$line" >>"$results"
                say "  $line"
            done
        done
    done
}

# --- three-node clusters ---

# Starts nodes 1-3 with their data under $work/<name>, forms the cluster and waits for a
# settled leader. Sets c_admin[i], c_proxy[i], c_status[i], c_pids[i], c_endpoints (admin URLs,
# comma separated), c_leader (the leader's admin URL) and exports KONNECT_TOKEN.
start_cluster() { # name
    local name=$1 i peers roles
    local -a p
    mapfile -t p < <(free_ports 12)
    declare -ga c_admin=() c_proxy=() c_status=() c_pids=() c_peer=()
    for i in 1 2 3; do
        c_peer[i]=${p[$((i - 1))]}
        c_admin[i]=${p[$((i + 2))]}
        c_status[i]=${p[$((i + 5))]}
        c_proxy[i]=${p[$((i + 8))]}
    done
    peers="1=127.0.0.1:${c_peer[1]},2=127.0.0.1:${c_peer[2]},3=127.0.0.1:${c_peer[3]}"
    [ -f "$work/secret.key" ] || konnect_key_file "$bin/konnect" "$work/secret.key"
    for i in 1 2 3; do
        "$bin/konnect" serve --node-id "$i" --zone "z$i" --data-dir "$work/$name/n$i" \
            --secret-key-file "$work/secret.key" \
            --peer-addr "127.0.0.1:${c_peer[i]}" --admin-addr "127.0.0.1:${c_admin[i]}" \
            --status-addr "127.0.0.1:${c_status[i]}" --proxy-addr "127.0.0.1:${c_proxy[i]}" \
            --peers "$peers" >"$work/logs/$name-konnect-$i.log" 2>&1 &
        pids+=($!)
        c_pids[i]=$!
    done
    c_endpoints="http://127.0.0.1:${c_admin[1]},http://127.0.0.1:${c_admin[2]},http://127.0.0.1:${c_admin[3]}"
    for i in 1 2 3; do
        wait_port "${c_admin[i]}" "${c_pids[i]}" "konnect node $i ($name)"
    done
    KONNECT_TOKEN=$("$bin/raft-writes" init-konnect --endpoint "http://127.0.0.1:${c_admin[1]}" |
        sed -n 's/^token=//p')
    [ -n "$KONNECT_TOKEN" ] || die "Cluster.Init returned no admin token"
    export KONNECT_TOKEN
    roles=$("$bin/raft-writes" leader --target konnect --endpoints "$c_endpoints")
    c_leader=$(sed -n 's/.*leader=\([^ ]*\).*/\1/p' <<<"$roles")
    say "$name cluster up: leader $c_leader"
}

# Stops the cluster's nodes: TERM, then KILL after 10 s.
halt_cluster() {
    local pid
    kill -TERM "${c_pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for pid in "${c_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    kill -KILL "${c_pids[@]}" 2>/dev/null || true
}

# Removes a halted cluster's data, or with KEEP=1 moves it (and its logs) aside, so that the
# next cluster of that name starts empty.
drop_cluster_data() { # name
    local f
    if [ "$KEEP" = 1 ]; then
        kept=$((kept + 1))
        mv "$work/$1" "$work/$1-$kept"
        for f in "$work/logs/$1"-konnect-[123].log; do
            [ -e "$f" ] && mv "$f" "${f%.log}-$kept.log"
        done
    else
        rm -rf "${work:?}/$1"
    fi
}

stop_cluster() { # name
    halt_cluster
    drop_cluster_data "$1"
}
kept=0

# Bytes on disk of the cluster's data directories.
data_bytes() { du -sb "$work/$1" | awk '{ print $1 }'; }

# --- stage 2: ShipUsage through Raft ---

# One measurement on a fresh cluster (so none inherits another's log, or a stuck follower):
# K shippers for SHIP_DURATION s, then the checks. No node may count more than the records
# acknowledged and one (the leader) must count exactly that many, else the script stops: a
# record lost or counted twice. The others get SETTLE_WAIT s to count the same; one that does
# not is reported (caught_up below 3/3), not fatal: that is replication falling behind, not a
# counting error. A run whose shipments are still unanswered a minute after its end is
# reported as stalled.
measure_ship() { # round batch shippers
    local round=$1 batch=$2 shippers=$3 line before after counted records spend behind settle cpu mib l f load1 stalled
    start_cluster ship
    load1=$(load1)
    before=$(cpu_ticks "${c_pids[@]}")
    line=$(timeout $((SHIP_DURATION + 180)) "$bin/usage-ledger" ship --endpoint "$c_leader" \
        --shippers "$shippers" --batch "$batch" --duration-secs "$SHIP_DURATION" \
        --consumers "$CONSUMERS" 2>>"$work/logs/usage-ledger.log") ||
        die "usage-ledger ship failed ($shippers shippers, batch $batch); see its log below"
    after=$(cpu_ticks "${c_pids[@]}")
    counted=$(sed -n 's/.* records_counted=\([0-9]*\).*/\1/p' <<<"$line")
    records=$(sed -n 's/.* records_timed=\([0-9]*\).*/\1/p' <<<"$line")
    stalled=0
    if grep -q ' unsettled=0 ' <<<"$line"; then
        # Exactly once: no node counts more than the records acknowledged, and at least one
        # (the leader; the leadership may have moved during the run) counts exactly that many.
        spend=$("$bin/usage-ledger" spend --endpoints "$c_endpoints" --expect "$counted" \
            --wait-secs "$SETTLE_WAIT" 2>>"$work/logs/usage-ledger.log" || true)
        local n over=0
        while read -r n; do
            [ "$n" -gt "$counted" ] && over=1
        done < <(sed -n 's/.* requests=\([0-9]*\) .*/\1/p' <<<"$spend")
        if [ "$over" = 1 ] || ! grep -q ' exact=1' <<<"$spend"; then
            die "the ledger does not count the $counted records acknowledged exactly once: $spend"
        fi
        behind=$(grep -c ' exact=0' <<<"$spend" || true)
    else
        # Shipments still unanswered a minute after the deadline: the cluster stopped
        # committing. Their records may or may not be counted, so there is nothing exact to
        # check; say what each node counts and go on with a fresh cluster.
        stalled=1
        spend=$("$bin/usage-ledger" spend --endpoints "$c_endpoints" 2>>"$work/logs/usage-ledger.log" || true)
        behind=3
        say "  WARNING: the cluster stopped answering shipments ($counted records acknowledged); each node counts:"
        while IFS= read -r l; do say "    $l"; done <<<"$spend"
    fi
    if [ "$stalled" = 1 ]; then
        settle=na
    elif [ "$behind" = 0 ]; then
        settle=$(sed -n 's/.* waited_ms=\([0-9]*\).*/\1/p' <<<"$spend" | sort -n | tail -1)
    else
        settle=na
        say "  WARNING: $behind node(s) did not count the $counted records within $SETTLE_WAIT s:"
        while IFS= read -r l; do say "    $l"; done <<<"$spend"
        grep -h 'AppendEntries' "$work"/logs/ship-konnect-[123].log | tail -n 2 | sed 's/^/    /' >&2 || true
    fi
    cpu=$(python3 -c "t = ($after - $before) / $clk_tck; print(f'server_cpu_s={t:.2f} server_cpu_us_per_record={t * 1e6 / max($records, 1):.1f}')")
    mib=$(($(data_bytes ship) / 1048576))
    line="$line round=$round stalled=$stalled leader_exact=$((1 - stalled)) caught_up=$((3 - behind))/3 settle_ms=$settle data_mib=$mib $cpu load1_before=$load1"
    echo "$line" >>"$results"
    say "  $line"
    # Keep the logs of a run whose followers fell behind.
    if [ "$behind" != 0 ] || [ "$stalled" = 1 ]; then
        for f in "$work"/logs/ship-konnect-[123].log; do mv "$f" "${f%.log}-r$round-b$batch-k$shippers.log"; done
    fi
    stop_cluster ship
}

stage_ship() {
    local idle0 round batch shippers
    start_cluster ship
    idle0=$(cpu_ticks "${c_pids[@]}")
    sleep 3
    ship_idle=$((($(cpu_ticks "${c_pids[@]}") - idle0) * 1000 / clk_tck / 3))
    stop_cluster ship
    say "ship stage: idle CPU of a cluster $ship_idle ms/s; $ROUNDS rounds x batch {$BATCHES} x shippers {$SHIPPERS}, $SHIP_DURATION s each, a fresh cluster each"
    for round in $(seq "$ROUNDS"); do
        for batch in $BATCHES; do
            for shippers in $SHIPPERS; do
                measure_ship "$round" "$batch" "$shippers"
            done
        done
    done
    ship_note="ship stage: a fresh 3-node cluster per measurement (idle CPU $ship_idle ms/s)"
}

# --- stage 3: end to end through AI calls ---

# The fake OpenAI provider: nginx, one worker, a fixed chat completion with a usage block.
start_fake_provider() { # port
    local port=$1
    mkdir -p "$work/provider"
    cat >"$work/provider/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/provider/nginx.pid;
error_log $work/logs/provider-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $work/provider/body;
    proxy_temp_path $work/provider/proxy;
    fastcgi_temp_path $work/provider/fastcgi;
    uwsgi_temp_path $work/provider/uwsgi;
    scgi_temp_path $work/provider/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /v1/chat/completions {
            default_type application/json;
            return 200 '{"id":"chatcmpl-bench","object":"chat.completion","created":1767225600,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench provider."},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}';
        }
        location / { return 404; }
    }
}
CONF
    nginx -p "$work/provider/" -e "$work/logs/provider-error.log" -c "$work/provider/nginx.conf" \
        >"$work/logs/provider.log" 2>&1 &
    provider_pid=$!
    pids+=("$provider_pid")
    wait_port "$port" "$provider_pid" "fake provider (nginx)"
}

# One counter of node i's /metrics (0 before its first increment).
metric() { # i name
    curl -s -m 5 "http://127.0.0.1:${c_status[$1]}/metrics" |
        awk -v n="$2" '$1 == n { v = $2 } END { printf "%d\n", v + 0 }'
}

# Sum of a counter over the three nodes.
metric_sum() { # name
    local i s=0
    for i in 1 2 3; do s=$((s + $(metric "$i" "$1"))); done
    echo "$s"
}

# Records appended but not yet shipped, summed over the nodes (by their counters; a node whose
# shipped counter is ahead, see the README, counts 0).
ship_lag() {
    local i a s lag=0
    for i in 1 2 3; do
        a=$(metric "$i" konnect_usage_wal_appends_total)
        s=$(metric "$i" konnect_usage_shipped_records_total)
        [ "$a" -gt "$s" ] && lag=$((lag + a - s))
    done
    echo "$lag"
}

# Waits (up to SECONDS) until no node has appended more than it shipped.
wait_drained() { # seconds
    local _
    for _ in $(seq $(($1 * 10))); do
        [ "$(ship_lag)" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# The calls of consumer e2e that the leader's ledger counts.
ledger_total() {
    "$bin/usage-ledger" spend --endpoints "$c_leader" --consumer e2e 2>>"$work/logs/usage-ledger.log" |
        sed -n 's/.* requests=\([0-9]*\).*/\1/p'
}

# wrk -t1 -c$CONNECTIONS on each node's proxy for SECONDS, in the background (in `pids`, so any
# exit stops them); outputs in $work/wrk-<tag>-<i>.out.
start_wrk3() { # seconds tag
    local j
    wrk_pids=()
    for j in 1 2 3; do
        timeout $(($1 + 30)) wrk -t1 -c"$CONNECTIONS" -d"$1"s --timeout 10s -s "$work/chat.lua" \
            "http://127.0.0.1:${c_proxy[j]}/v1/chat/completions" \
            >"$work/wrk-$2-$j.out" 2>>"$work/logs/wrk.log" &
        wrk_pids+=($!)
        pids+=($!)
    done
}

wrk3_running() {
    local j
    for j in "${wrk_pids[@]}"; do kill -0 "$j" 2>/dev/null && return 0; done
    return 1
}

wait_wrk3() { # tag
    local j
    for j in "${wrk_pids[@]}"; do wait "$j" || die "wrk failed ($1)"; done
}

stage_e2e() {
    local provider_port i
    provider_port=$(free_ports 1)
    start_fake_provider "$provider_port"
    start_cluster e2e
    cat >"$work/ai.yaml" <<EOF
kind: Team
name: bench
spec: {}
---
kind: Consumer
name: e2e
spec: {team: bench}
---
kind: Provider
name: openai
spec: {type: openai, base_url: "http://127.0.0.1:$provider_port/v1", api_key: {secret: sk-bench-not-a-real-key}}
---
kind: Model
name: gpt
spec:
  targets: [{provider: openai, model: gpt-4o-mini}]
  price: {input_per_mtok_micros: 150000, output_per_mtok_micros: 600000}
---
kind: Route
name: ai
spec: {paths: ["/v1"], ai: {}, auth: {key: true}}
EOF
    local ctl=("$bin/konnectctl" --endpoint "$c_leader")
    "${ctl[@]}" apply -f "$work/ai.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply of the AI route failed"
    api_key=$("${ctl[@]}" keys create --consumer e2e --description "benches/usage-ledger" 2>>"$work/logs/konnectctl.log") ||
        die "konnectctl keys create failed"
    [ -n "$api_key" ] || die "konnectctl keys create printed no key"
    body='{"model":"gpt","messages":[{"role":"user","content":"Say hello."}]}'
    for i in 1 2 3; do
        local status=""
        for _ in $(seq 100); do
            status=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -X POST \
                -H "authorization: Bearer $api_key" -H 'content-type: application/json' \
                -d "$body" "http://127.0.0.1:${c_proxy[i]}/v1/chat/completions" || true)
            [ "$status" = 200 ] && break
            sleep 0.1
        done
        [ "$status" = 200 ] || die "node $i does not serve the AI route (last status $status)"
    done
    say "AI route served by all three nodes"

    cat >"$work/chat.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $api_key"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
    say "e2e stage: warm-up (2 s), then $ROUNDS rounds of $DURATION s, wrk -t1 -c$CONNECTIONS on each node"
    start_wrk3 2 warm
    wait_wrk3 warm

    local round tids perf_pid perf_out lag lag_max before_app before_ship before_n cpu0 cpu1 t_end \
        after_app after_ship after_n ok_calls line spend settle wal_fsyncs all_fsyncs total0 total1 prev behind l load1
    for round in $(seq "$ROUNDS"); do
        # Quiet start: what the warm-up (or the last round) appended is shipped.
        wait_drained 30 || die "the nodes did not ship the records of the warm-up or the last round within 30 s"
        total0=$(ledger_total)
        load1=$(load1)
        before_app=$(metric_sum konnect_usage_wal_appends_total)
        before_ship=$(metric_sum konnect_usage_shipped_records_total)
        before_n=$(metric_sum konnect_usage_shipments_total)
        perf_out="$work/perf-e2e-$round.txt"
        perf_pid=""
        if [ "$use_perf" = 1 ]; then
            # Per thread, so the WAL writer's fdatasyncs stand apart from redb's (Raft log, state).
            tids=$(IFS=,; echo "${c_pids[*]}")
            perf stat --per-thread -x, -o "$perf_out" -e syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync \
                -p "$tids" -- sleep "$DURATION" 2>>"$work/logs/perf.log" &
            perf_pid=$!
            pids+=("$perf_pid")
        fi
        cpu0=$(cpu_ticks "${c_pids[@]}")
        start_wrk3 "$DURATION" "r$round"
        lag_max=0
        while wrk3_running; do
            lag=$(ship_lag)
            [ "$lag" -gt "$lag_max" ] && lag_max=$lag
            sleep 0.5
        done
        wait_wrk3 "r$round"
        t_end=$(date +%s%N)
        cpu1=$(cpu_ticks "${c_pids[@]}")
        [ -z "$perf_pid" ] || wait "$perf_pid" || true
        # Drain: every node has shipped at least what its metric says it appended.
        wait_drained 60 || die "the nodes did not ship their records within 60 s of the load's end"
        local drain_ms=$((($(date +%s%N) - t_end) / 1000000))
        # Calls cut by wrk's stop left records that their appends counter does not show (see the
        # README): wait until the leader's total holds still for 1.5 s (the shipper looks at its
        # WAL at least every second), then until every node counts the same.
        prev=-1
        total1=$(ledger_total)
        for _ in $(seq 40); do
            [ "$total1" = "$prev" ] && break
            prev=$total1
            sleep 1.5
            total1=$(ledger_total)
        done
        # Followers that do not get there within SETTLE_WAIT are reported, as in the ship stage.
        spend=$("$bin/usage-ledger" spend --endpoints "$c_endpoints" --consumer e2e --expect "$total1" \
            --wait-secs "$SETTLE_WAIT" 2>>"$work/logs/usage-ledger.log" || true)
        behind=$(grep -c ' exact=0' <<<"$spend" || true)
        if [ "$behind" = 0 ]; then
            settle=$(sed -n 's/.* waited_ms=\([0-9]*\).*/\1/p' <<<"$spend" | sort -n | tail -1)
        else
            settle=na
            say "  WARNING: $behind node(s) did not count the leader's $total1 calls within $SETTLE_WAIT s:"
            while IFS= read -r l; do say "    $l"; done <<<"$spend"
        fi
        after_app=$(metric_sum konnect_usage_wal_appends_total)
        after_ship=$(metric_sum konnect_usage_shipped_records_total)
        after_n=$(metric_sum konnect_usage_shipments_total)
        local requests=0 err_status=0 errs=0 p99=0 f r st e99 eio
        for i in 1 2 3; do
            f="$work/wrk-r$round-$i.out"
            line=$(grep '^requests=' "$f") || die "no figures from wrk on node $i: $(cat "$f")"
            r=$(sed -n 's/^requests=\([0-9]*\).*/\1/p' <<<"$line")
            st=$(sed -n 's/.* err_status=\([0-9]*\).*/\1/p' <<<"$line")
            e99=$(sed -n 's/.* p99_us=\([0-9]*\).*/\1/p' <<<"$line")
            eio=$(sed -n 's/.* err_connect=\([0-9]*\) err_read=\([0-9]*\) err_write=\([0-9]*\).* err_timeout=\([0-9]*\).*/\1+\2+\3+\4/p' <<<"$line")
            requests=$((requests + r))
            err_status=$((err_status + st))
            errs=$((errs + eio))
            [ "$e99" -gt "$p99" ] && p99=$e99
        done
        ok_calls=$((requests - err_status))
        # No completed call is missing from the ledger, and at most the calls in flight when wrk
        # stopped (one per connection) are in it without wrk having seen their answer.
        local counted=$((total1 - total0)) in_flight=$((3 * CONNECTIONS))
        [ "$counted" -ge "$ok_calls" ] || die "round $round: the ledger counted $counted calls, fewer than the $ok_calls completed"
        [ "$counted" -le $((ok_calls + err_status + in_flight)) ] ||
            die "round $round: the ledger counted $counted calls, more than the $ok_calls completed + $in_flight in flight"
        wal_fsyncs=na
        all_fsyncs=na
        if [ -n "$perf_pid" ] && [ -s "$perf_out" ]; then
            # perf --per-thread names each thread comm-tid; comm is cut to 15 characters.
            wal_fsyncs=$(awk -F, '$1 ~ /^usage-wal-write/ { s += $2 } END { print s + 0 }' "$perf_out")
            all_fsyncs=$(awk -F, '$2 ~ /^[0-9]+$/ { s += $2 } END { print s + 0 }' "$perf_out")
        fi
        line=$(python3 - <<EOF
d = $DURATION
ok, counted = $ok_calls, $counted
app, shipped, shipments = $after_app - $before_app, $after_ship - $before_ship, $after_n - $before_n
cpu = ($cpu1 - $cpu0) / $clk_tck
wal, allf = "$wal_fsyncs", "$all_fsyncs"
rate = lambda x: f"{int(x) / d:.1f}" if x != "na" else "na"
per = lambda x: f"{counted / int(x):.1f}" if x not in ("na", "0") else "na"
print(f"stage=e2e connections_per_node=$CONNECTIONS duration_s={d} calls_ok={ok} calls_per_sec={ok / d:.1f} "
      f"err_status=$err_status err_io=$errs p99_ms_worst_node={$p99 / 1000:.3f} "
      f"counted={counted} counted_per_sec={counted / d:.1f} counted_minus_ok={counted - ok} "
      f"appends_metric={app} shipped_metric={shipped} shipments={shipments} "
      f"records_per_shipment={shipped / max(shipments, 1):.1f} "
      f"wal_fsyncs={wal} wal_fsyncs_per_sec={rate(wal)} records_per_wal_fsync={per(wal)} "
      f"all_fsyncs_per_sec={rate(allf)} ship_lag_max={$lag_max} drain_ms=$drain_ms "
      f"ledger_total=$total1 caught_up=$((3 - behind))/3 settle_ms=$settle "
      f"server_cpu_s={cpu:.2f} server_cpu_us_per_call={cpu * 1e6 / max(ok, 1):.1f} round=$round load1_before=$load1")
EOF
)
        echo "$line" >>"$results"
        say "  $line"
    done
    # Exactly once, to the record: stop the nodes and count what their WALs hold (records are
    # kept for --usage-retention, 7 days, after they are counted); the ledger must count the
    # same number.
    total1=$(ledger_total)
    e2e_note="e2e cluster: data on disk after the stage $(($(data_bytes e2e) / 1048576)) MiB (3 nodes)"
    halt_cluster
    local in_wals=0 n
    for i in 1 2 3; do
        n=$("$bin/usage-ledger" wal-records --dir "$work/e2e/n$i/usage-wal" 2>>"$work/logs/usage-ledger.log" |
            sed -n 's/^records=\([0-9]*\).*/\1/p')
        [ -n "$n" ] || die "cannot count the records in node $i's usage WAL"
        in_wals=$((in_wals + n))
    done
    drop_cluster_data e2e
    [ "$in_wals" = "$total1" ] ||
        die "exactly once failed: the ledger counts $total1 calls, the three nodes' WALs hold $in_wals records"
    e2e_note="$e2e_note; exactly once: the ledger's total ($total1) equals the records in the three WALs ($in_wals)"
    say "exactly once: ledger total $total1 = records in the three WALs $in_wals"
}

ship_note=""
e2e_note=""
has_stage wal && stage_wal
has_stage ship && stage_ship
has_stage e2e && stage_e2e

# --- summary ---

cat <<EOF

usage-ledger: konnect $konnect_version; goal: 50,000 usage records/s through a three-node cluster
machine: $(nproc) cores, $(uname -r), shared; loopback only; data on $fs_type under $BENCH_TMP (removed after the run unless KEEP=1)
each figure: median [min-max] of $ROUNDS rounds; fsync counts from the WAL's own counter (konnect), the logger's (naive) and perf (os fsyncs: every fdatasync/fsync of the process, setup included)
$ship_note
$e2e_note
EOF
python3 - "$results" <<'EOF'
import statistics
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1]) if line.strip()]

def cell(rs, key, fmt="{:,.0f}"):
    v = [float(r[key]) for r in rs if r.get(key, "na") != "na"]
    if not v:
        return "na"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"

def med(rs, key):
    v = [float(r[key]) for r in rs if r.get(key, "na") != "na"]
    return statistics.median(v) if v else None

wal = [r for r in rows if r["stage"] == "wal"]
if wal:
    print("\n1. WAL append stage: records made durable per second (each appender waits for its record)")
    hdr = f"{'backend':8} {'appenders':>9}  {'records/s':>26}  {'fsyncs/s':>24}  {'records/fsync':>20}  {'p99 ms':>20}  {'os fsyncs/s':>12}  {'CPU us/rec':>10}"
    print(hdr)
    print("-" * len(hdr))
    for a in sorted({r["appenders"] for r in wal}, key=int):
        for b in ("konnect", "naive", "sqlite"):
            rs = [r for r in wal if r["backend"] == b and r["appenders"] == a]
            if not rs:
                continue
            for r in rs:
                r["os_fsyncs_per_sec"] = (f"{int(r['os_fsyncs']) / float(r['elapsed_s']):.1f}"
                                          if r.get("os_fsyncs", "na") != "na" else "na")
            print(f"{b:8} {a:>9}  {cell(rs, 'records_per_sec'):>26}  {cell(rs, 'fsyncs_per_sec'):>24}  "
                  f"{cell(rs, 'records_per_fsync', '{:,.1f}'):>20}  {cell(rs, 'p99_ms', '{:.2f}'):>20}  "
                  f"{cell(rs, 'os_fsyncs_per_sec'):>12}  {cell(rs, 'cpu_us_per_record', '{:.1f}'):>10}")
    print("ratios of the medians (records/s): konnect / reference")
    for a in sorted({r["appenders"] for r in wal}, key=int):
        k = med([r for r in wal if r["backend"] == "konnect" and r["appenders"] == a], "records_per_sec")
        for b in ("naive", "sqlite"):
            o = med([r for r in wal if r["backend"] == b and r["appenders"] == a], "records_per_sec")
            if k and o:
                print(f"  {a:>5} appenders: konnect/{b} = {k / o:.1f}x")

ship = [r for r in rows if r["stage"] == "ship"]
if ship:
    print("\n2. Raft ship+apply stage: ShipUsage records counted per second (3 nodes, via the leader's Peer.Forward)")
    hdr = (f"{'batch':>6} {'shippers':>8}  {'records/s':>26}  {'shipment p99 ms':>24}  {'settle ms':>10}  "
           f"{'server CPU us/rec':>22}  {'followers caught up':>19}  {'errors':>6}")
    print(hdr)
    print("-" * len(hdr))
    for b in sorted({r["batch"] for r in ship}, key=int):
        for k in sorted({r["shippers"] for r in ship}, key=int):
            rs = [r for r in ship if r["batch"] == b and r["shippers"] == k]
            if not rs:
                continue
            errors = sum(int(r["errors"]) for r in rs)
            caught = " ".join("stalled" if r.get("stalled") == "1" else r["caught_up"] for r in rs)
            print(f"{b:>6} {k:>8}  {cell(rs, 'records_per_sec'):>26}  {cell(rs, 'p99_ms', '{:.1f}'):>24}  "
                  f"{cell(rs, 'settle_ms'):>10}  {cell(rs, 'server_cpu_us_per_record', '{:.1f}'):>22}  {caught:>19}  {errors:>6}")
    stalled = [r for r in ship if r.get("stalled") == "1"]
    stuck = [r for r in ship if r["caught_up"] != "3/3" and r.get("stalled") != "1"]
    moves = sum(int(r.get("leader_moves", 0)) for r in ship)
    print(f"exactly once: after every run that was not stalled no node counted more than the records acknowledged and the leader counted exactly those; "
          f"times a shipper found the leader moved: {moves}; "
          f"runs where a follower had not caught up within SETTLE_WAIT: {len(stuck)} of {len(ship)}; "
          f"runs where the cluster stopped answering shipments (stalled): {len(stalled)}")

e2e = [r for r in rows if r["stage"] == "e2e"]
if e2e:
    print("\n3. End to end: AI calls through all three proxies (wrk), records through WAL, shipper and Raft")
    for key, label, fmt in (
        ("calls_per_sec", "AI calls/s completed (200)", "{:,.0f}"),
        ("counted_per_sec", "records counted in the ledger/s", "{:,.0f}"),
        ("wal_fsyncs_per_sec", "WAL fsyncs/s (3 nodes, perf)", "{:,.0f}"),
        ("records_per_wal_fsync", "records per WAL fsync", "{:,.1f}"),
        ("all_fsyncs_per_sec", "all fdatasync+fsync/s (3 nodes)", "{:,.0f}"),
        ("records_per_shipment", "records per shipment", "{:,.1f}"),
        ("ship_lag_max", "ship lag, max sampled (records)", "{:,.0f}"),
        ("drain_ms", "drain after the load (ms)", "{:,.0f}"),
        ("settle_ms", "3 nodes equal after (ms)", "{:,.0f}"),
        ("p99_ms_worst_node", "call p99 ms (worst node)", "{:.2f}"),
        ("server_cpu_us_per_call", "server CPU us per call", "{:,.0f}"),
    ):
        print(f"  {label:34} {cell(e2e, key, fmt)}")
    print(f"  {'followers caught up, per round':34} {' '.join(r['caught_up'] for r in e2e)}")
    errs = sum(int(r["err_status"]) + int(r["err_io"]) for r in e2e)
    extra = ", ".join(r["counted_minus_ok"] for r in e2e)
    print(f"  non-200 answers and I/O errors: {errs}; calls counted minus calls wrk saw complete, per round: {extra} (calls cut by wrk's stop)")

loads = [float(r["load1_before"]) for r in rows if "load1_before" in r]
if loads:
    print(f"\n1-minute load average before the measurements (2 cores): {min(loads):.2f}-{max(loads):.2f}, median {statistics.median(loads):.2f}")

print("\nraw lines:")
for line in open(sys.argv[1]):
    print("  " + line.rstrip())
EOF
