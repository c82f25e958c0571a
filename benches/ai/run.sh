#!/usr/bin/env bash
# benches/ai/run.sh: konnect's AI gateway against LiteLLM's proxy, on the same machine, in the
# same run, in front of the same mock provider: the latency each gateway adds to a chat
# completion (p50/p99 at LATENCY_CONNECTIONS connections, minus the same request sent straight
# to the mock in the same round) and the most chat completions per second each completes (the
# best of its rates at each of CONNECTIONS connections), for plain JSON answers and for streamed
# (SSE) ones. The goal (issue 7):
# at least 10x LiteLLM's throughput and under 1 ms added p50.
#
# The mock provider (`ai-bench mock`) is an OpenAI-compatible server answering
# `POST /v1/chat/completions` after DELAY_MS; a streamed answer is CHUNKS content chunks
# CHUNK_GAP_MS apart, then the finish chunk, the usage chunk (asked for with
# `stream_options.include_usage`) and `data: [DONE]`. The load generator (`ai-bench load`) keeps
# C keep-alive connections each posting the same chat request back to back and checks every
# answer (2xx, a complete completion or stream); any error fails the script. Three targets get
# the same request body:
#   direct   the mock itself (the baseline: what the provider alone takes)
#   konnect  `konnect serve --dev`, a Route with `ai: {}` and key auth, a Provider of type
#            `openai` at the mock, a Model `gpt-bench`, a Consumer's API key; its defaults
#            otherwise: every call is a usage record in the node's usage WAL (counted by the
#            Raft ledger) and in <data-dir>/ai-usage.jsonl
#   litellm  `litellm --config` (pip's `litellm[proxy]` in a venv at LITELLM_VENV): one model
#            `gpt-bench` = `openai/gpt-bench` at the mock, a master key, no database (so no
#            spend logs), uvicorn's access log off, LITELLM_LOG=ERROR, one worker process
#
# Placement: each gateway gets one core (PROXY_CPU, by taskset: konnect's async runtime then
# starts one worker thread; LiteLLM runs `--num_workers 1`, one Python process, and Python
# serves requests on one thread anyway); the mock and the load generator share the other
# (LOAD_CPU). Only one gateway is under load at a time; the order of the targets rotates each
# round.
#
# At the end the script checks that konnect's usage log has one record per answer konnect gave
# (the ledger counted every call).
#
# What it touches: builds `konnect`, `konnectctl` and `ai-bench` (release) unless SKIP_BUILD=1;
# makes the venv and `pip install`s LiteLLM into it if it has no `litellm` (PyPI; kept for later
# runs); starts the mock, konnect and LiteLLM in the foreground on free loopback ports, with
# configs, logs and data in one new directory under $BENCH_TMP, and removes both on exit,
# whatever the exit. Every run and wait has a bound.
#
# Settings (environment variables):
#   ROUNDS=3               repetitions of each measurement (median and min-max are printed)
#   DURATION=10            measured seconds per run (after WARMUP seconds not counted)
#   WARMUP=3               (with many connections a slow gateway's first answers take seconds)
#   LATENCY_CONNECTIONS=1  connections of the latency runs (no queueing in the gateway)
#   CONNECTIONS="32 256"   connection counts of the throughput runs; a gateway's throughput is
#                          the best of them (LiteLLM does more per second with fewer, konnect
#                          needs many: the mock alone allows at most CONNECTIONS / DELAY_MS
#                          requests per second, which `direct` shows)
#   DELAY_MS=20            the mock's delay before the first byte of an answer
#   CHUNKS=8               content chunks of a streamed answer
#   CHUNK_GAP_MS=1         milliseconds between a stream's events
#   MODES="json stream"    plain answers, streamed answers, or both
#   TARGETS="direct konnect litellm"
#   LATENCY_RT_PRIORITY=10 during the latency runs the gateway, the mock and the load generator
#                          run under SCHED_FIFO at this priority (chrt; every thread), so that
#                          a neighbour's compile on the shared machine does not decide the
#                          figure (measured: with a compile on both cores, konnect's added p50
#                          was 1.4 ms at normal priority and 0.8 ms under SCHED_FIFO; p99 18 ms
#                          and 2.7 ms). They use little CPU at one connection. 0: normal
#                          priority. The throughput runs always run at normal priority
#                          (otherwise they would take both cores from everything else)
#   LOAD_CPU=0             core of the mock and the load generator
#   PROXY_CPU=1            core of the gateway under test
#   LITELLM_VENV=/var/tmp/litellm-venv   where LiteLLM is installed (made if missing)
#   LITELLM_PIP='litellm[proxy]'         what pip installs there
#   PROFILE=0              1: afterwards, `perf record -g` konnect for 5 s under the throughput
#                          load (the largest of CONNECTIONS, the first of MODES) and print the
#                          top of `perf report --no-children`
#   BENCH_TMP=/var/tmp     where the work directory is made
#   KEEP=0                 1 keeps the work directory (configs, logs, data)
#   SKIP_BUILD=0           1 uses the binaries already in target/release
#
# See benches/README.md for what the figures mean and their caveats.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
LATENCY_CONNECTIONS=${LATENCY_CONNECTIONS:-1}
CONNECTIONS=${CONNECTIONS:-"32 256"}
DELAY_MS=${DELAY_MS:-20}
CHUNKS=${CHUNKS:-8}
CHUNK_GAP_MS=${CHUNK_GAP_MS:-1}
MODES=${MODES:-"json stream"}
TARGETS=${TARGETS:-"direct konnect litellm"}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
LATENCY_RT_PRIORITY=${LATENCY_RT_PRIORITY:-10}
LITELLM_VENV=${LITELLM_VENV:-/var/tmp/litellm-venv}
LITELLM_PIP=${LITELLM_PIP:-'litellm[proxy]'}
PROFILE=${PROFILE:-0}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

BENCH_NAME=ai-bench
# shellcheck source=../lib.sh
source "$here/../lib.sh"

has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# --- tools ---

command -v python3 >/dev/null || die "python3 is needed (free ports, LiteLLM, summary)"
command -v curl >/dev/null || die "curl is needed (readiness checks)"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
if [ "$LATENCY_RT_PRIORITY" != 0 ]; then
    chrt -f "$LATENCY_RT_PRIORITY" true 2>/dev/null ||
        die "chrt -f $LATENCY_RT_PRIORITY failed (needs root, or CAP_SYS_NICE); LATENCY_RT_PRIORITY=0 measures at normal priority"
fi
[ "$(nproc)" -ge 2 ] || say "warning: $(nproc) core(s): load, mock and gateway will share one"
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then
    die "PROFILE=1 needs perf (Debian's linux-perf)"
fi

build_release "konnect konnect-client raft-writes-bench" konnect konnectctl ai-bench
konnect_version=$(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)

if has_target litellm && [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
    say "installing $LITELLM_PIP into $LITELLM_VENV (pip)"
    python3 -m venv "$LITELLM_VENV" || die "cannot make a venv at $LITELLM_VENV (python3-venv?)"
    "$LITELLM_VENV/bin/pip" install -q "$LITELLM_PIP" || die "pip install $LITELLM_PIP failed"
fi
litellm_version=na
if has_target litellm; then
    litellm_version=$("$LITELLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))') ||
        die "litellm is not importable in $LITELLM_VENV"
fi

# --- work directory, ports ---

start_work_dir
say "work directory: $work"
results="$work/results.txt"
: >"$results"
clk_tck=$(getconf CLK_TCK)

mapfile -t ports < <(free_ports 6)
mock_port=${ports[0]}
k_proxy=${ports[1]}
k_admin=${ports[2]}
k_peer=${ports[3]}
k_status=${ports[4]}
ll_port=${ports[5]}

# --- the mock provider ---

taskset -c "$LOAD_CPU" "$bin/ai-bench" mock --addr "127.0.0.1:$mock_port" --delay-ms "$DELAY_MS" \
    --chunks "$CHUNKS" --chunk-gap-ms "$CHUNK_GAP_MS" >"$work/logs/mock.log" 2>&1 &
mock_pid=$!
pids+=("$mock_pid")
wait_port "$mock_port" "$mock_pid" "the mock provider"

# --- konnect: one node (--dev), one core ---

k_pid=""
konnect_key=""
if has_target konnect; then
    konnect_key_file "$bin/konnect" "$work/secret.key"
    start_konnect_dev "$PROXY_CPU" "$bin/konnect" "$work/konnect" "$work/logs/konnect.log"
    ctl() { "$bin/konnectctl" --endpoint "http://127.0.0.1:$k_admin" --token-file "$work/konnect/admin-token" "$@"; }
    cat >"$work/ai.yaml" <<EOF
kind: Team
name: bench
spec: {}
---
kind: Consumer
name: bench
spec: {team: bench}
---
kind: Provider
name: mock
spec: {type: openai, base_url: "http://127.0.0.1:$mock_port/v1", api_key: {secret: sk-mock-not-a-real-key}}
---
kind: Model
name: gpt-bench
spec:
  targets: [{provider: mock, model: gpt-bench}]
  price: {input_per_mtok_micros: 150000, output_per_mtok_micros: 600000}
---
kind: Route
name: ai
spec: {paths: ["/v1"], ai: {}, auth: {key: true}}
EOF
    ctl apply -f "$work/ai.yaml" >>"$work/logs/konnectctl.log" 2>&1 || die "konnectctl apply of the AI route failed"
    konnect_key=$(ctl keys create --consumer bench --description "benches/ai" 2>>"$work/logs/konnectctl.log") ||
        die "konnectctl keys create failed"
    [ -n "$konnect_key" ] || die "konnectctl keys create printed no key"
fi

# --- LiteLLM: one worker process, one core ---

ll_pid=""
ll_key=sk-litellm-bench-key
if has_target litellm; then
    mkdir -p "$work/litellm"
    cat >"$work/litellm/config.yaml" <<EOF
model_list:
  - model_name: gpt-bench
    litellm_params:
      model: openai/gpt-bench
      api_base: http://127.0.0.1:$mock_port/v1
      api_key: sk-mock-not-a-real-key
litellm_settings:
  telemetry: false
general_settings:
  master_key: $ll_key
EOF
    # uvicorn's access log (a line per request) off; errors still logged.
    cat >"$work/litellm/logging.json" <<'EOF'
{"version": 1, "disable_existing_loggers": false,
 "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
 "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "WARNING"},
             "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": false}}}
EOF
    # LITELLM_LOCAL_MODEL_COST_MAP: use the cost map in the package instead of fetching it.
    (cd "$work/litellm" && LITELLM_LOG=ERROR LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MODE=PRODUCTION \
        exec taskset -c "$PROXY_CPU" "$LITELLM_VENV/bin/litellm" --config "$work/litellm/config.yaml" \
        --host 127.0.0.1 --port "$ll_port" --num_workers 1 --log_config "$work/litellm/logging.json" \
        >"$work/logs/litellm.log" 2>&1) &
    ll_pid=$!
    pids+=("$ll_pid")
    for _ in $(seq 1200); do
        kill -0 "$ll_pid" 2>/dev/null || die "litellm exited while starting"
        [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$ll_port/health/liveliness" || true)" = 200 ] && break
        sleep 0.1
    done
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$ll_port/health/liveliness" || true)" = 200 ] ||
        die "litellm did not answer /health/liveliness within 120 s"
fi

# --- measurements ---

url_of() { # target
    case $1 in
    direct) echo "http://127.0.0.1:$mock_port/v1/chat/completions" ;;
    konnect) echo "http://127.0.0.1:$k_proxy/v1/chat/completions" ;;
    litellm) echo "http://127.0.0.1:$ll_port/v1/chat/completions" ;;
    esac
}
key_of() { # target
    case $1 in
    direct) echo sk-mock-not-a-real-key ;;
    konnect) echo "$konnect_key" ;;
    litellm) echo "$ll_key" ;;
    esac
}
# The processes whose CPU time is the gateway's (LiteLLM's worker may be a child).
gateway_pids() { # target
    local pid
    case $1 in
    direct) pid=$mock_pid ;;
    konnect) pid=$k_pid ;;
    litellm) pid=$ll_pid ;;
    esac
    echo "$pid" $(pgrep -P "$pid" || true)
}

# The proxy core's busy time (all processes, ticks) from /proc/stat.
core_busy() { awk -v c="cpu$PROXY_CPU" '$1 == c { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# Every thread of the processes to SCHED_FIFO at the given priority, or back to normal (0).
set_priority() { # priority pid...
    local prio=$1 pid
    shift
    for pid in "$@"; do
        if [ "$prio" = 0 ]; then
            chrt -o -a -p 0 "$pid" >/dev/null 2>&1 || true
        else
            chrt -f -a -p "$prio" "$pid" >/dev/null 2>&1 || die "chrt failed for pid $pid"
        fi
    done
}

konnect_answered=0
measure() { # round target mode phase connections
    local round=$1 target=$2 mode=$3 phase=$4 conns=$5 line before after gp busy0 busy1 t0 t1
    local stream=()
    [ "$mode" = stream ] && stream=(--stream)
    read -r -a gp <<<"$(gateway_pids "$target")"
    local prio=0
    [ "$phase" = latency ] && prio=$LATENCY_RT_PRIORITY
    local rt=()
    if [ "$prio" != 0 ]; then
        rt=(chrt -f "$prio")
        set_priority "$prio" "${gp[@]}" "$mock_pid"
    fi
    before=$(cpu_ticks "${gp[@]}")
    busy0=$(core_busy)
    t0=$(date +%s.%N)
    line=$(timeout $((WARMUP + DURATION + 120)) "${rt[@]}" taskset -c "$LOAD_CPU" "$bin/ai-bench" load \
        --url "$(url_of "$target")" --key "$(key_of "$target")" --model gpt-bench "${stream[@]}" \
        --connections "$conns" --duration-secs "$DURATION" --warmup-secs "$WARMUP" \
        2>>"$work/logs/load.log") || die "ai-bench load failed ($target, $mode, $conns connections); see its log"
    after=$(cpu_ticks "${gp[@]}")
    busy1=$(core_busy)
    t1=$(date +%s.%N)
    [ "$prio" != 0 ] && set_priority 0 "${gp[@]}" "$mock_pid"
    local answered errors
    answered=$(sed -n 's/.* answered=\([0-9]*\).*/\1/p' <<<"$line")
    errors=$(sed -n 's/.* errors=\([0-9]*\).*/\1/p' <<<"$line")
    [ "$target" = konnect ] && konnect_answered=$((konnect_answered + answered))
    line="round=$round target=$target mode=$mode phase=$phase $line"
    line="$line cpu_us_per_req=$(python3 -c "print(f'{($after - $before) * 1e6 / $clk_tck / max($answered, 1):.1f}')")"
    # The gateway core's time used by every other process, per second of the run: how much the
    # shared machine disturbed this measurement.
    # (direct: the mock is on the load core, so all of the gateway core's time is others'.)
    local own=$((after - before))
    [ "$target" = direct ] && own=0
    line="$line other_ms_per_s=$(python3 -c "print(f'{max(0, ($busy1 - $busy0) - $own) * 1000 / $clk_tck / ($t1 - $t0):.0f}')")"
    echo "$line" >>"$results"
    say "  $line"
    [ "$errors" = 0 ] || die "$target ($mode, $conns connections) had $errors failed requests; first: $(sed -n 's/.* first_error=\([^ ]*\).*/\1/p' <<<"$line")"
}

read -r -a targets <<<"$TARGETS"
n_targets=${#targets[@]}
say "$ROUNDS rounds x {$MODES} x {$TARGETS} x {latency at $LATENCY_CONNECTIONS, throughput at {$CONNECTIONS} connections}, $DURATION s each"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        for conns in "$LATENCY_CONNECTIONS" $CONNECTIONS; do
            phase=throughput
            [ "$conns" = "$LATENCY_CONNECTIONS" ] && phase=latency
            for i in $(seq 0 $((n_targets - 1))); do
                target=${targets[$(((i + round - 1) % n_targets))]}
                measure "$round" "$target" "$mode" "$phase" "$conns"
            done
        done
    done
done

# --- the ledger counted every konnect call ---

ledger_note=""
if has_target konnect; then
    usage_log="$work/konnect/ai-usage.jsonl"
    records=0
    for _ in $(seq 100); do
        records=$(wc -l <"$usage_log" 2>/dev/null || echo 0)
        [ "$records" -ge "$konnect_answered" ] && break
        sleep 0.1
    done
    [ "$records" = "$konnect_answered" ] ||
        die "konnect answered $konnect_answered calls but its usage log has $records records"
    ledger_note="konnect's usage log holds $records records: one per call it answered"
    say "$ledger_note"
fi

# --- profile (PROFILE=1) ---

if [ "$PROFILE" = 1 ] && has_target konnect; then
    profile_mode=${MODES%% *}
    profile_stream=()
    [ "$profile_mode" = stream ] && profile_stream=(--stream)
    say "profiling konnect for 5 s under ${CONNECTIONS##* } connections ($profile_mode)"
    taskset -c "$LOAD_CPU" "$bin/ai-bench" load --url "$(url_of konnect)" --key "$konnect_key" \
        --model gpt-bench "${profile_stream[@]}" --connections "${CONNECTIONS##* }" --duration-secs 8 --warmup-secs 1 \
        >"$work/profile-load.txt" 2>>"$work/logs/load.log" &
    prof_load=$!
    pids+=("$prof_load")
    sleep 2
    perf record -g -o "$work/perf.data" -p "$k_pid" -- sleep 5 2>>"$work/logs/perf.log" >/dev/null
    wait "$prof_load" || die "the load under the profile failed"
    perf report -i "$work/perf.data" --no-children --stdio --percent-limit 1.5 2>/dev/null |
        grep -v '^$' | head -120 >"$work/perf-report.txt" || true
fi

# --- summary ---

cat <<EOF

ai: konnect $konnect_version against LiteLLM $litellm_version; goal: >= 10x LiteLLM's requests/s, < 1 ms added p50
machine: $(nproc) cores, $(uname -r), shared; loopback only; gateway on core $PROXY_CPU (konnect: one runtime worker; LiteLLM: --num_workers 1), mock and load generator on core $LOAD_CPU
latency runs under SCHED_FIFO priority $LATENCY_RT_PRIORITY (0: normal priority); throughput runs at normal priority
mock: ${DELAY_MS} ms to the first byte; streams: $CHUNKS content chunks ${CHUNK_GAP_MS} ms apart, then finish + usage + [DONE]
each figure: median [min-max] of $ROUNDS rounds of $DURATION s (after $WARMUP s of warm-up); added = the gateway's figure minus direct's in the same round
other ms/s: CPU time the gateway's core gave to other processes (the shared machine) per second of a run
$ledger_note
EOF
python3 - "$results" "$TARGETS" "$MODES" <<'EOF'
import statistics
import sys

rows = [dict(kv.split("=", 1) for kv in line.split()) for line in open(sys.argv[1]) if line.strip()]
targets = sys.argv[2].split()
modes = sys.argv[3].split()

def vals(rs, key):
    return [float(r[key]) for r in rs if r.get(key, "na") != "na"]

def cell(v, fmt):
    if not v:
        return "na"
    if len(v) == 1:
        return fmt.format(v[0])
    return f"{fmt.format(statistics.median(v))} [{fmt.format(min(v))}-{fmt.format(max(v))}]"

def pick(target, mode, phase):
    return [r for r in rows if r["target"] == target and r["mode"] == mode and r["phase"] == phase]

def added(target, mode, key):
    """Per round: the target's figure minus direct's, same mode, latency phase."""
    out = []
    for r in pick(target, mode, "latency"):
        d = [x for x in pick("direct", mode, "latency") if x["round"] == r["round"]]
        if d and r.get(key, "na") != "na" and d[0].get(key, "na") != "na":
            out.append(float(r[key]) - float(d[0][key]))
    return out

for mode in modes:
    stream = mode == "stream"
    print(f"\n{'streamed (SSE)' if stream else 'JSON'} answers")
    conns = {r["connections"] for r in rows if r["mode"] == mode and r["phase"] == "latency"}
    print(f"  latency at {'/'.join(sorted(conns))} connection(s), ms" + ("; first byte = time to the first body bytes" if stream else ""))
    hdr = f"  {'target':8} {'p50':>22} {'p99':>22} {'added p50':>22} {'added p99':>22}"
    if stream:
        hdr += f" {'first byte p50':>22} {'added first byte p50':>22}"
    hdr += f" {'other ms/s':>10}"
    print(hdr)
    for t in targets:
        rs = pick(t, mode, "latency")
        if not rs:
            continue
        line = f"  {t:8} {cell(vals(rs, 'p50_ms'), '{:.3f}'):>22} {cell(vals(rs, 'p99_ms'), '{:.3f}'):>22}"
        line += f" {cell(added(t, mode, 'p50_ms'), '{:.3f}') if t != 'direct' else '':>22}"
        line += f" {cell(added(t, mode, 'p99_ms'), '{:.3f}') if t != 'direct' else '':>22}"
        if stream:
            line += f" {cell(vals(rs, 'ttfb_p50_ms'), '{:.3f}'):>22}"
            line += f" {cell(added(t, mode, 'ttfb_p50_ms'), '{:.3f}') if t != 'direct' else '':>22}"
        line += f" {cell(vals(rs, 'other_ms_per_s'), '{:.0f}'):>10}"
        print(line)
    print("  throughput (requests/s: answers completed per second of the window)")
    print(f"  {'target':8} {'conns':>5} {'requests/s':>26} {'p50 ms':>22} {'p99 ms':>22} {'gateway CPU us/req':>22} {'other ms/s':>10}")
    for t in targets:
        for c in sorted({r["connections"] for r in pick(t, mode, "throughput")}, key=int):
            rs = [r for r in pick(t, mode, "throughput") if r["connections"] == c]
            print(f"  {t:8} {c:>5} {cell(vals(rs, 'rps'), '{:,.0f}'):>26} {cell(vals(rs, 'p50_ms'), '{:.2f}'):>22} "
                  f"{cell(vals(rs, 'p99_ms'), '{:.2f}'):>22} {cell(vals(rs, 'cpu_us_per_req'), '{:,.0f}'):>22} "
                  f"{cell(vals(rs, 'other_ms_per_s'), '{:.0f}'):>10}")

def best(target, mode):
    """The target's best connection count (by median requests/s) and its rows."""
    out = None
    for c in {r["connections"] for r in pick(target, mode, "throughput")}:
        rs = [r for r in pick(target, mode, "throughput") if r["connections"] == c]
        m = statistics.median(vals(rs, "rps"))
        if out is None or m > out[0]:
            out = (m, c, rs)
    return out

print("\ngoal checks (medians)")
for mode in modes:
    k, l, d = best("konnect", mode), best("litellm", mode), best("direct", mode)
    if k and l:
        ratio = k[0] / max(l[0], 1e-9)
        per_round = " ".join(
            f"{float(a['rps']) / max(float(b['rps']), 1e-9):.1f}"
            for a in k[2] for b in l[2] if a["round"] == b["round"])
        ceiling = ""
        if d and k[0] > 0.8 * d[0]:
            ceiling = " (konnect is near what the mock and load generator reach directly: the ratio is a lower bound)"
        print(f"  {mode:6} requests/s konnect/litellm = {ratio:.1f}x (best of each: konnect {k[0]:,.0f} at {k[1]}, "
              f"litellm {l[0]:,.0f} at {l[1]} connections; per round: {per_round}): "
              f"{'met' if ratio >= 10 else 'NOT met'} (>= 10x){ceiling}")
    a = added("konnect", mode, "p50_ms")
    if a:
        m = statistics.median(a)
        print(f"  {mode:6} konnect added p50 = {m:.3f} ms: {'met' if m < 1 else 'NOT met'} (< 1 ms)")
    al = added("litellm", mode, "p50_ms")
    if a and al:
        print(f"  {mode:6} added p50 litellm/konnect = {statistics.median(al) / max(statistics.median(a), 0.001):.0f}x")

errors = sum(int(r["errors"]) for r in rows)
print(f"\nfailed requests: {errors} (every answer checked: 2xx and a complete completion or stream)")
print("\nraw lines:")
for line in open(sys.argv[1]):
    print("  " + line.rstrip())
EOF
if [ -s "$work/perf-report.txt" ]; then
    printf '\nkonnect under load (perf report --no-children, top entries):\n'
    cat "$work/perf-report.txt"
fi
