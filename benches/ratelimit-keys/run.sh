#!/usr/bin/env bash
# benches/ratelimit-keys/run.sh: does a strict rate limit keep konnect's memory and disk bounded
# when a million distinct keys pass through it? One `konnect serve --dev` node, one route behind
# a strict RateLimit keyed on a request header (`key: header:x-k`, limit LIMIT per WINDOW s), and
# wrk sending KEYS requests that each carry a new x-k value (a counter, from a Lua script). Every
# new key makes the node ask Raft for units (one `GrantRequests` entry carries the asks of about
# 2 ms) and leaves one grant row in the replicated state and one allocation in the node's memory
# until they are collected:
#
#   - the state machine deletes grant rows of finished windows, oldest first, at most 1,000 per
#     grant entry (so the collection needs grant entries, i.e. asks, after the windows end);
#   - the node drops allocations a window after theirs ended, in a sweep every 5 s.
#
# Each pass (PASSES of them, each with its own keys) records konnect's VmRSS (and VmHWM, its
# peak), the sizes of state.redb, raft-log.redb and the current snapshot, and the grant rows in
# that snapshot (read from the snapshot file: every row of the state, written every 5,000 log
# entries by default): before the load, every SAMPLE s during it, at its end, and after the
# windows are over and the collection ran. After the load it waits for the last window to end,
# then sends a trickle of requests with other new keys (wrk -c1, TRICKLE s at a time) until a
# snapshot built after that point holds no grant row of the load's keys (bounded by TRICKLE_MAX
# seconds), then waits for the node's sweep (the windows' end + WINDOW + 6 s) before the "after"
# figures.
#
# What it touches: builds `konnect` and `konnectctl` (release) unless SKIP_BUILD=1, installs
# Debian's nginx and wrk with apt-get if one is missing (needs root), starts an upstream (nginx,
# one worker, `return 200`) and the konnect node in the foreground on free loopback ports, with
# configs, logs and data in one new directory under $BENCH_TMP, and removes both on exit, whatever
# the exit. Every wait has a bound.
#
# Settings (environment variables):
#   KEYS=1000000      distinct keys (requests) per pass
#   PASSES=2          passes, each with new keys (the second shows whether what the first left
#                     behind grows)
#   LIMIT=10          the RateLimit's limit per key and window (each key is sent once: every
#                     request should be admitted)
#   WINDOW=10         the RateLimit's window, seconds
#   CONNECTIONS=64    wrk connections (wrk -t1)
#   LOAD_TIMEOUT=900  longest a pass's load may run (wrk -d); a pass that does not finish says so
#   SAMPLE=5          seconds between samples during the load
#   TRICKLE=2         seconds of each trickle run (wrk -t1 -c1, new keys)
#   TRICKLE_MAX=120   longest the trickle may run in total per pass
#   LOAD_CPU=0        core of wrk and the upstream
#   PROXY_CPU=1       core of konnect (taskset: one runtime worker)
#   BENCH_TMP=/var/tmp  where the work directory is made (the data directory is on that disk)
#   KEEP=0            1 keeps the work directory
#   SKIP_BUILD=0      1 uses the binaries already in target/release
#
# See benches/README.md for the figures and their caveats.
set -euo pipefail

KEYS=${KEYS:-1000000}
PASSES=${PASSES:-2}
LIMIT=${LIMIT:-10}
WINDOW=${WINDOW:-10}
CONNECTIONS=${CONNECTIONS:-64}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}
SAMPLE=${SAMPLE:-5}
TRICKLE=${TRICKLE:-2}
TRICKLE_MAX=${TRICKLE_MAX:-120}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

BENCH_NAME=ratelimit-keys
# shellcheck source=../lib.sh
source "$here/../lib.sh"

# --- tools ---

command -v python3 >/dev/null || die "python3 is needed (free ports, snapshot reading, summary)"
command -v curl >/dev/null || die "curl is needed (readiness checks, metrics)"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
need_packages nginx wrk

build_release "konnect konnect-client" konnect konnectctl
konnect_version=$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)
wrk_version=$(wrk -v 2>&1 | sed -n '1s/^wrk \([^ ]*\).*/\1/p' || true)

start_work_dir
say "work directory: $work ($(df -T "$work" | awk 'NR == 2 { print $2 }'))"

mapfile -t ports < <(free_ports 5)
up_port=${ports[0]}
k_proxy=${ports[1]}
k_admin=${ports[2]}
k_peer=${ports[3]}
k_status=${ports[4]}

# --- upstream: nginx, one worker, `return 200` ---

start_upstream_nginx "$up_port"

# --- konnect: one node (--dev), one core ---

data="$work/konnect"
konnect_key_file "$bin/konnect" "$work/secret.key"
start_konnect_dev "$PROXY_CPU" "$bin/konnect" "$data" "$work/logs/konnect.log"

ctl() { "$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" --token-file "$data/admin-token" "$@"; }

cat >"$work/limit.yaml" <<EOF
kind: Service
name: up
spec: {targets: [{url: "http://127.0.0.1:$up_port"}]}
---
kind: Route
name: keys
spec: {paths: ["/"], service: up}
---
kind: RateLimit
name: per-key
spec: {applies_to: {route: keys}, key: "header:x-k", limit: $LIMIT, window: ${WINDOW}s, mode: strict}
EOF
ctl apply -f "$work/limit.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply failed"
# The limit is live once an answer carries its policy.
policy=""
for _ in $(seq 100); do
    policy=$(curl -s -o /dev/null -m 2 -D - -H "x-k: warm-up" "http://127.0.0.1:$k_proxy/x" | tr -d '\r' |
        sed -n 's/^ratelimit-policy: *//Ip' || true)
    [ -n "$policy" ] && break
    sleep 0.1
done
[ -n "$policy" ] || die "konnect answered without a RateLimit-Policy within 10 s"
say "limit live: RateLimit-Policy $policy"

# --- load: one new x-k value per request ---

# Args after `--`: how many requests, the prefix of their keys, and a file to create when that
# many answers are in. The thread then stops sending (requests still in flight, at most one per
# connection, carry keys past the count: they are counted in `sent`); wrk's main thread sleeps
# until -d regardless, so the script interrupts it (SIGINT) once the file exists. Prints the
# answers by status and the latency.
cat >"$work/keys.lua" <<'EOF'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  keys = tonumber(args[1]); prefix = args[2]; marker = args[3]
  sent = 0; answered = 0; counts = {}
end
function request()
  sent = sent + 1
  return wrk.format(nil, nil, {["x-k"] = prefix .. sent})
end
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  answered = answered + 1
  if answered == keys then
    if marker and marker ~= "" then io.open(marker, "w"):close() end
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local all, parts, sent_all = {}, {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do all[k] = (all[k] or 0) + v end
    sent_all = sent_all + t:get("sent")
  end
  for k, v in pairs(all) do table.insert(parts, "s" .. k .. "=" .. v) end
  table.sort(parts)
  io.write(string.format("requests=%d sent=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d %s\n",
    summary.requests, sent_all, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, table.concat(parts, " ")))
end
EOF

# A short run (the trickle): wrk ends after its -d.
run_keys() { # connections seconds count prefix
    timeout $(($2 + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c"$1" -d"$2"s --timeout 10s -s "$work/keys.lua" \
        "http://127.0.0.1:$k_proxy/x" -- "$3" "$4" "" 2>>"$work/logs/wrk.log"
}

# The load: KEYS answers, or LOAD_TIMEOUT s, whichever comes first. wrk runs in the background
# (in `pids`, so any exit stops it) and is interrupted once its script has created the marker.
# Leaves wrk's output in $work/wrk-load.out. (Not to be run in a subshell: `pids` must see it.)
run_load() { # prefix
    local wpid rc=0
    rm -f "$work/load-done"
    timeout $((LOAD_TIMEOUT + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"$LOAD_TIMEOUT"s \
        --timeout 10s -s "$work/keys.lua" "http://127.0.0.1:$k_proxy/x" -- "$KEYS" "$1" "$work/load-done" \
        >"$work/wrk-load.out" 2>>"$work/logs/wrk.log" &
    wpid=$!
    pids+=("$wpid")
    while kill -0 "$wpid" 2>/dev/null && [ ! -e "$work/load-done" ]; do
        sleep 0.05
    done
    kill -INT "$wpid" 2>/dev/null || true # timeout passes it on to wrk
    wait "$wpid" || rc=$?
    grep -q '^requests=' "$work/wrk-load.out" || die "wrk failed (exit $rc): $(tail -n 5 "$work/wrk-load.out")"
}

# --- what is measured ---

rss_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
size_of() { if [ -e "$1" ]; then stat -c %s "$1"; else echo 0; fi; }
metric() { # name: konnect's counter, 0 when it has none yet
    curl -s -m 5 "http://127.0.0.1:$k_status/metrics" |
        awk -v m="$1" '$1 == m { n = $2 } END { printf "%d\n", n }'
}

# Rows of the grant tables in the current snapshot, and how many grant rows belong to keys of
# the given prefix (the row key holds the limit's name and the key; its value is a GrantRow).
# Prints: snap_index= snap_grants= snap_expiry= snap_prefix_rows= snap_rows= snap_mtime=
snapshot_rows() { # prefix
    python3 - "$data/snapshots/current.snap" "$1" <<'EOF'
import os, sys
path, prefix = sys.argv[1], sys.argv[2].encode()

def varint(b, i):
    n = shift = 0
    while True:
        c = b[i]; i += 1
        n |= (c & 0x7F) << shift
        if c < 0x80:
            return n, i
        shift += 7

def fields(b):
    i = 0
    while i < len(b):
        tag, i = varint(b, i)
        kind = tag & 7
        if kind == 0:
            v, i = varint(b, i)
        elif kind == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        elif kind == 1:
            v, i = b[i:i + 8], i + 8
        elif kind == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {kind}")
        yield tag >> 3, v

if not os.path.exists(path):
    print("snap_index=0 snap_grants=0 snap_expiry=0 snap_prefix_rows=0 snap_rows=0 snap_mtime=0")
    sys.exit()
data = open(path, "rb").read()
i, index, tables, matching, rows = 0, 0, {}, 0, 0
while i < len(data):
    n, i = varint(data, i)
    rec, i = data[i:i + n], i + n
    for f, v in fields(rec):
        if f == 1:  # header: last_log_id (field 2) -> LogId.index (field 3)
            for hf, hv in fields(v):
                if hf == 2:
                    for lf, lv in fields(hv):
                        if lf == 3:
                            index = lv
        elif f == 2:  # row: table (1), key (2), value (3)
            rows += 1
            row = dict(fields(v))
            table = row.get(1, b"").decode()
            tables[table] = tables.get(table, 0) + 1
            if table == "grants" and prefix and prefix in row.get(2, b""):
                matching += 1
print(f"snap_index={index} snap_grants={tables.get('grants', 0)} snap_expiry={tables.get('grant_expiry', 0)}"
      f" snap_prefix_rows={matching} snap_rows={rows} snap_mtime={int(os.path.getmtime(path))}")
EOF
}

samples="$work/samples.txt"
: >"$samples"
# One line of figures: when, konnect's memory, the data files, the grant entries so far, and
# (given a prefix) what the current snapshot holds. Reading a snapshot of a few hundred
# thousand rows takes python seconds of CPU, so the samples during the load skip it (prefix -).
record() { # pass phase prefix
    local line
    line="pass=$1 phase=$2 t_ms=$(($(date +%s%N) / 1000000)) rss_kb=$(rss_kb "$k_pid" VmRSS) hwm_kb=$(rss_kb "$k_pid" VmHWM) anon_kb=$(rss_kb "$k_pid" RssAnon)"
    line="$line state_bytes=$(size_of "$data/state.redb") log_bytes=$(size_of "$data/raft-log.redb")"
    line="$line snap_bytes=$(size_of "$data/snapshots/current.snap") grant_entries=$(metric konnect_ratelimit_grant_entries_total)"
    line="$line grant_failures=$(metric konnect_ratelimit_grant_failures_total)"
    [ "$3" = - ] || line="$line $(snapshot_rows "$3")"
    echo "$line" >>"$samples"
    say "  $line"
}

field() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }

results="$work/results.txt"
: >"$results"
for pass in $(seq "$PASSES"); do
    prefix="p$pass-"
    say "pass $pass: $KEYS requests with distinct x-k values ($prefix<n>), wrk -t1 -c$CONNECTIONS"
    record "$pass" before "$prefix"
    # Samples while the load runs (a process of this script: cleaned up on any exit; told to
    # stop by a file, so it never stops halfway through a line).
    rm -f "$work/stop-sampler"
    (
        while [ ! -e "$work/stop-sampler" ]; do
            sleep "$SAMPLE"
            [ -e "$work/stop-sampler" ] || record "$pass" during -
        done
    ) &
    sampler=$!
    pids+=("$sampler")
    start_ms=$(($(date +%s%N) / 1000000))
    run_load "$prefix"
    out=$(<"$work/wrk-load.out")
    end_ms=$(($(date +%s%N) / 1000000))
    touch "$work/stop-sampler"
    wait "$sampler" || true
    line=$(grep '^requests=' <<<"$out") || die "no figures from wrk (pass $pass): $out"
    say "  wrk: $line"
    record "$pass" end "$prefix"
    requests=$(field "$line" requests)
    [ "$requests" -ge "$KEYS" ] || say "warning: pass $pass answered $requests of $KEYS within LOAD_TIMEOUT=$LOAD_TIMEOUT s"

    # Every window the load's keys used is over at the next multiple of WINDOW after the end.
    windows_over_ms=$(((end_ms / 1000 / WINDOW + 1) * WINDOW * 1000))
    now_ms=$(($(date +%s%N) / 1000000))
    [ "$now_ms" -ge "$windows_over_ms" ] || sleep "$(python3 -c "print(($windows_over_ms - $now_ms) / 1000 + 0.5)")"
    record "$pass" windows-over "$prefix"

    # The trickle: grant entries (new keys), until a snapshot built after the windows ended
    # holds none of the load's rows.
    say "  trickle: wrk -c1 with new keys, $TRICKLE s at a time, until a fresh snapshot holds none of $prefix (at most $TRICKLE_MAX s)"
    trickle_start_ms=$(($(date +%s%N) / 1000000))
    trickle_n=0
    trickle_requests=0
    collected=no
    while :; do
        trickle_n=$((trickle_n + 1))
        tout=$(run_keys 1 "$TRICKLE" 100000000 "t$pass.$trickle_n-") || die "wrk (trickle) failed"
        trickle_requests=$((trickle_requests + $(field "$(grep '^requests=' <<<"$tout")" requests)))
        snap=$(snapshot_rows "$prefix")
        if [ "$(field "$snap" snap_mtime)" -ge "$((windows_over_ms / 1000 + 1))" ] &&
            [ "$(field "$snap" snap_prefix_rows)" = 0 ]; then
            collected=yes
            break
        fi
        [ $(($(date +%s%N) / 1000000 - trickle_start_ms)) -lt $((TRICKLE_MAX * 1000)) ] || break
    done
    trickle_end_ms=$(($(date +%s%N) / 1000000))
    [ "$collected" = yes ] || say "warning: pass $pass: after $TRICKLE_MAX s of trickle the snapshot still holds rows of $prefix"
    record "$pass" collected "$prefix"

    # The node's sweep: allocations go a window after theirs ended (the trickle's too), checked
    # every 5 s.
    sweep_ms=$(((trickle_end_ms / 1000 / WINDOW + 1) * WINDOW * 1000 + WINDOW * 1000 + 6000))
    now_ms=$(($(date +%s%N) / 1000000))
    [ "$now_ms" -ge "$sweep_ms" ] || sleep "$(python3 -c "print(($sweep_ms - $now_ms) / 1000)")"
    record "$pass" after "$prefix"
    echo "pass=$pass $line load_s=$(python3 -c "print(f'{($end_ms - $start_ms) / 1000:.1f}')")" \
        "trickle_s=$(python3 -c "print(f'{($trickle_end_ms - $trickle_start_ms) / 1000:.1f}')")" \
        "trickle_requests=$trickle_requests collected=$collected" >>"$results"
done

# --- summary ---

cat <<EOF

ratelimit-keys: konnect ($konnect_version), wrk $wrk_version
machine: $(nproc) cores, $(uname -r), shared; wrk -t1 -c$CONNECTIONS and the upstream (nginx, 1 worker) on core $LOAD_CPU, konnect (--dev, one node) on core $PROXY_CPU
limit: RateLimit per-key, strict, key header:x-k, limit $LIMIT per ${WINDOW}s window, on the only route; $KEYS requests per pass, each with a new x-k value; $PASSES pass(es)
data directory on $(df -T "$work" | awk 'NR == 2 { print $2 }'); snapshots every 5,000 log entries (the default)
EOF
python3 - "$results" "$samples" <<'EOF'
import statistics
import sys

res = [dict(kv.split("=", 1) for kv in l.split()) for l in open(sys.argv[1])]
smp = [dict(kv.split("=", 1) for kv in l.split()) for l in open(sys.argv[2])]
mib = lambda kb: int(kb) / 1024
mb = lambda b: int(b) / 1e6

print()
print("load (each pass: its keys once each)")
for r in res:
    secs = int(r["duration_us"]) / 1e6
    statuses = " ".join(f"{k[1:]}: {v}" for k, v in sorted(r.items()) if k.startswith("s") and k[1:].isdigit())
    errors = sum(int(r[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout"))
    print(f"  pass {r['pass']}: {int(r['requests']):,} answers ({int(r['sent']):,} sent) in {secs:.1f} s ="
          f" {int(r['requests']) / secs:,.0f} req/s; p50 {int(r['p50_us']) / 1000:.2f} ms, p99"
          f" {int(r['p99_us']) / 1000:.2f} ms, max {int(r['max_us']) / 1000:.0f} ms; statuses {statuses};"
          f" socket errors {errors}")
    print(f"          then trickle {r['trickle_s']} s ({int(r['trickle_requests']):,} requests) until the load's rows"
          f" were collected: {r['collected']}")

print()
print("figures (RSS = VmRSS, anon = its anonymous part (RssAnon), HWM = peak RSS, in MiB; files in MB; snapshot")
print("rows as of the snapshot's index; prefix = grant rows of that pass's keys)")
print(f"  {'pass':>4} {'phase':13} {'s':>6} {'RSS':>7} {'anon':>7} {'HWM':>7} {'state':>7} {'log':>7} {'snap':>7}"
      f" {'entries':>8} {'fail':>5} {'snap@idx':>9} {'grants':>8} {'expiry':>8} {'prefix':>8}")
t0 = int(smp[0]["t_ms"])
for s in smp:
    snap = lambda k, w: f"{s[k]:>{w}}" if k in s else f"{'-':>{w}}"
    print(f"  {s['pass']:>4} {s['phase']:13} {(int(s['t_ms']) - t0) / 1000:6.0f} {mib(s['rss_kb']):7.1f} {mib(s['anon_kb']):7.1f} {mib(s['hwm_kb']):7.1f}"
          f" {mb(s['state_bytes']):7.1f} {mb(s['log_bytes']):7.1f} {mb(s['snap_bytes']):7.1f}"
          f" {int(s['grant_entries']):8d} {int(s['grant_failures']):5d} {snap('snap_index', 9)}"
          f" {snap('snap_grants', 8)} {snap('snap_expiry', 8)} {snap('snap_prefix_rows', 8)}")

print()
print("per pass: RSS before -> end of load -> after collection and sweep; peak (VmHWM); state.redb")
for r in res:
    p = r["pass"]
    by = {s["phase"]: s for s in smp if s["pass"] == p}
    during = [s for s in smp if s["pass"] == p]
    peak_state = max(int(s["state_bytes"]) for s in during)
    print(f"  pass {p}: RSS {mib(by['before']['rss_kb']):.1f} -> {mib(by['end']['rss_kb']):.1f}"
          f" -> {mib(by['after']['rss_kb']):.1f} MiB (HWM {mib(by['after']['hwm_kb']):.1f});"
          f" state.redb {mb(by['before']['state_bytes']):.1f} -> {mb(by['end']['state_bytes']):.1f}"
          f" -> {mb(by['after']['state_bytes']):.1f} MB (largest sample {mb(peak_state):.1f});"
          f" grant rows in the last snapshot {by['after']['snap_grants']} (of this pass's keys:"
          f" {by['after']['snap_prefix_rows']}); grant entries in the pass"
          f" {int(by['after']['grant_entries']) - int(by['before']['grant_entries'])}")
if len(res) > 1:
    rates = [int(r["requests"]) / (int(r["duration_us"]) / 1e6) for r in res]
    print(f"  load req/s over the passes: median {statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]")

print()
print("raw lines:")
for line in open(sys.argv[1]):
    print("  " + line.rstrip())
EOF
