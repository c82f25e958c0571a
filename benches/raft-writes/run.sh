#!/usr/bin/env bash
# benches/raft-writes/run.sh: three local konnect nodes against a three-member etcd cluster on
# the same machine, in the same run: small writes per second, p99 latency and server CPU time
# per write, at 1 and at 64 concurrent clients, printed with the ratios konnect/etcd.
#
# What it touches: builds `konnect` and `raft-writes` (release), installs Debian's etcd-server
# and etcd-client with apt-get if `etcd` is missing (needs root), starts six server processes
# on free loopback ports with their data in one new directory under $BENCH_TMP (default
# /var/tmp, a real disk here), and removes both on exit, whatever the exit. It stops by itself:
# each measurement lasts DURATION seconds and every wait has a bound.
#
# Settings (environment variables):
#   ROUNDS=3         repetitions of each measurement; konnect and etcd alternate going first
#   DURATION=10      seconds per measurement
#   CLIENTS="1 64"   concurrent client counts to measure
#   FOLLOWER=1       also measure once through a follower (1) or not (0)
#   BENCH_TMP=/var/tmp   where the data directory is made (say tmpfs here to compare)
#   KEEP=0           1 keeps the data directory and logs after the run
#   SKIP_BUILD=0     1 uses the binaries already in target/release
#
# See benches/README.md for what the figures mean and their caveats.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 64"}
FOLLOWER=${FOLLOWER:-1}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
KEEP=${KEEP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

BENCH_NAME=raft-writes
# shellcheck source=../lib.sh
source "$here/../lib.sh"

# --- tools ---

command -v python3 >/dev/null || die "python3 is needed (free ports, summary)"
if ! command -v etcd >/dev/null; then
    say "etcd not found: installing Debian's etcd-server and etcd-client"
    [ "$(id -u)" = 0 ] || die "installing etcd needs root; install etcd-server yourself"
    apt-get update && apt-get install -y etcd-server etcd-client
fi
etcd_version=$(etcd --version | sed -n 's/^etcd Version: //p')

build_release "konnect raft-writes-bench" konnect raft-writes

# --- data directory and cleanup ---

start_work_dir

fs_type=$(stat -f -c %T "$work")
say "data directory: $work (file system: $fs_type)"

mapfile -t ports < <(free_ports 18)


# --- konnect: three nodes ---

declare -a k_peer k_admin k_pids
for i in 1 2 3; do
    k_peer[i]=${ports[$((i - 1))]}
    k_admin[i]=${ports[$((i + 2))]}
done
peers="1=127.0.0.1:${k_peer[1]},2=127.0.0.1:${k_peer[2]},3=127.0.0.1:${k_peer[3]}"
konnect_key_file "$bin/konnect" "$work/secret.key"
for i in 1 2 3; do
    "$bin/konnect" serve --node-id "$i" --zone "z$i" --data-dir "$work/konnect/n$i" \
        --secret-key-file "$work/secret.key" \
        --peer-addr "127.0.0.1:${k_peer[i]}" --admin-addr "127.0.0.1:${k_admin[i]}" \
        --status-addr "127.0.0.1:${ports[$((i + 5))]}" --proxy-addr "127.0.0.1:${ports[$((i + 8))]}" \
        --peers "$peers" >"$work/logs/konnect-$i.log" 2>&1 &
    pids+=($!)
    k_pids[i]=$!
done
k_endpoints="http://127.0.0.1:${k_admin[1]},http://127.0.0.1:${k_admin[2]},http://127.0.0.1:${k_admin[3]}"
for i in 1 2 3; do
    wait_port "${k_admin[i]}" "${k_pids[i]}" "konnect node $i"
done
KONNECT_TOKEN=$("$bin/raft-writes" init-konnect --endpoint "http://127.0.0.1:${k_admin[1]}" |
    sed -n 's/^token=//p')
[ -n "$KONNECT_TOKEN" ] || die "Cluster.Init returned no admin token"
export KONNECT_TOKEN
roles=$("$bin/raft-writes" leader --target konnect --endpoints "$k_endpoints")
k_leader=$(sed -n 's/.*leader=\([^ ]*\).*/\1/p' <<<"$roles")
k_follower=$(sed -n 's/.*follower=\([^ ]*\).*/\1/p' <<<"$roles")
say "konnect up: leader $k_leader, follower $k_follower"

# --- etcd: three members ---

declare -a e_client e_peer e_pids
for i in 1 2 3; do
    e_client[i]=${ports[$((i + 11))]}
    e_peer[i]=${ports[$((i + 14))]}
done
initial="e1=http://127.0.0.1:${e_peer[1]},e2=http://127.0.0.1:${e_peer[2]},e3=http://127.0.0.1:${e_peer[3]}"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd/e$i" \
        --listen-client-urls "http://127.0.0.1:${e_client[i]}" \
        --advertise-client-urls "http://127.0.0.1:${e_client[i]}" \
        --listen-peer-urls "http://127.0.0.1:${e_peer[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${e_peer[i]}" \
        --initial-cluster "$initial" --initial-cluster-state new \
        --initial-cluster-token "raft-writes-$$" --logger zap --log-outputs stderr \
        >"$work/logs/etcd-$i.log" 2>&1 &
    pids+=($!)
    e_pids[i]=$!
done
e_endpoints="http://127.0.0.1:${e_client[1]},http://127.0.0.1:${e_client[2]},http://127.0.0.1:${e_client[3]}"
for i in 1 2 3; do
    wait_port "${e_client[i]}" "${e_pids[i]}" "etcd member e$i"
done
roles=$("$bin/raft-writes" leader --target etcd --endpoints "$e_endpoints")
e_leader=$(sed -n 's/.*leader=\([^ ]*\).*/\1/p' <<<"$roles")
e_follower=$(sed -n 's/.*follower=\([^ ]*\).*/\1/p' <<<"$roles")
say "etcd $etcd_version up: leader $e_leader, follower $e_follower"

# --- measuring ---

clk_tck=$(getconf CLK_TCK)
# Records each cluster holds before a measurement: konnect's cost per write grows with it.
declare -A records=([konnect]=0 [etcd]=0)
results="$work/results.txt"
: >"$results"


measure() { # target via clients round
    local target=$1 via=$2 clients=$3 round=$4 endpoint server_pids before after line ops
    case "$target/$via" in
    konnect/leader) endpoint=$k_leader ;;
    konnect/follower) endpoint=$k_follower ;;
    etcd/leader) endpoint=$e_leader ;;
    etcd/follower) endpoint=$e_follower ;;
    esac
    if [ "$target" = konnect ]; then
        server_pids=("${k_pids[@]}")
    else
        server_pids=("${e_pids[@]}")
    fi
    before=$(cpu_ticks "${server_pids[@]}")
    line=$(timeout $((DURATION + 60)) "$bin/raft-writes" --target "$target" \
        --endpoint "$endpoint" --clients "$clients" --duration-secs "$DURATION" \
        2>>"$work/logs/raft-writes.log") ||
        die "raft-writes failed ($target via $via, $clients clients); see its log below"
    after=$(cpu_ticks "${server_pids[@]}")
    ops=$(sed -n 's/.* ops=\([0-9]*\).*/\1/p' <<<"$line")
    local cpu
    cpu=$(python3 -c "t = ($after - $before) / $clk_tck; print(f'server_cpu_s={t:.2f} server_cpu_us_per_op={t * 1e6 / max($ops, 1):.1f}')")
    line="$line via=$via round=$round records_before=${records[$target]} $cpu"
    records[$target]=$((records[$target] + ops + 1)) # + the warm-up write
    echo "$line" >>"$results"
    say "  $line"
}

# What each cluster burns doing nothing (heartbeats, timers), over the same kind of window:
# it is in every CPU-per-write figure, and weighs most at 1 client.
k_idle0=$(cpu_ticks "${k_pids[@]}")
e_idle0=$(cpu_ticks "${e_pids[@]}")
sleep 5
k_idle=$((($(cpu_ticks "${k_pids[@]}") - k_idle0) * 1000 / clk_tck / 5))
e_idle=$((($(cpu_ticks "${e_pids[@]}") - e_idle0) * 1000 / clk_tck / 5))
say "idle CPU: konnect $k_idle ms/s, etcd $e_idle ms/s (3 processes each)"

say "measuring: $ROUNDS rounds x clients {$CLIENTS} x {konnect, etcd}, $DURATION s each"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="konnect etcd"; else order="etcd konnect"; fi
    for clients in $CLIENTS; do
        for target in $order; do
            measure "$target" leader "$clients" "$round"
        done
    done
done
if [ "$FOLLOWER" = 1 ]; then
    say "measuring once through a follower"
    for clients in $CLIENTS; do
        for target in konnect etcd; do
            measure "$target" follower "$clients" 1
        done
    done
fi

# --- summary ---

cat <<EOF

raft-writes: konnect (3 nodes, $(cd "$root" && git describe --always --dirty 2>/dev/null || echo unknown)) vs etcd $etcd_version (3 members)
machine: $(nproc) cores, $(uname -r); everything on loopback; data in $work ($fs_type, removed after the run unless KEEP=1)
each figure: median [min-max] of $ROUNDS rounds of $DURATION s; server CPU = user+sys of the 3 server processes / acknowledged writes
idle CPU of each cluster (included in its CPU per write): konnect $k_idle ms/s, etcd $e_idle ms/s
EOF
python3 - "$results" <<'EOF'
import statistics
import sys

rows = []
with open(sys.argv[1]) as f:
    for line in f:
        rows.append(dict(kv.split("=", 1) for kv in line.split()))

def group(target, via, clients):
    return [r for r in rows if (r["target"], r["via"], r["clients"]) == (target, via, clients)]

def values(rs, key):
    return [float(r[key]) for r in rs if r[key] != "na"]

def cell(rs, key, fmt):
    v = values(rs, key)
    if not v:
        return "na"
    if len(v) == 1:
        return fmt.format(v[0])
    return (fmt + " [" + fmt + "-" + fmt + "]").format(statistics.median(v), min(v), max(v))

def median(rs, key):
    v = values(rs, key)
    return statistics.median(v) if v else float("nan")

clients_list = sorted({r["clients"] for r in rows}, key=int)
vias = [v for v in ("leader", "follower") if any(r["via"] == v for r in rows)]
header = f"{'target':8} {'via':8} {'clients':>7}  {'writes/s':>24}  {'p99 ms':>22}  {'server CPU us/write':>22}  {'errors':>6}"
print()
print(header)
print("-" * len(header))
for via in vias:
    for clients in clients_list:
        for target in ("konnect", "etcd"):
            rs = group(target, via, clients)
            if not rs:
                continue
            errors = sum(int(r["errors"]) for r in rs)
            print(f"{target:8} {via:8} {clients:>7}  {cell(rs, 'ops_per_sec', '{:.0f}'):>24}  "
                  f"{cell(rs, 'p99_ms', '{:.2f}'):>22}  {cell(rs, 'server_cpu_us_per_op', '{:.0f}'):>22}  {errors:>6}")

print()
print("ratios konnect/etcd of the medians (writes/s: higher is better for konnect; p99 and CPU: lower is)")
for via in vias:
    for clients in clients_list:
        k, e = group("konnect", via, clients), group("etcd", via, clients)
        if not k or not e:
            continue
        ops = median(k, "ops_per_sec") / median(e, "ops_per_sec")
        p99 = median(k, "p99_ms") / median(e, "p99_ms")
        cpu = median(k, "server_cpu_us_per_op") / median(e, "server_cpu_us_per_op")
        goal = "met" if ops >= 1.0 else "NOT met"
        print(f"  via {via:8} {clients:>3} clients: writes/s {ops:.2f}  p99 {p99:.2f}  CPU/write {cpu:.2f}"
              f"   (goal konnect >= etcd in writes/s: {goal})")

print()
print("raw lines:")
for line in open(sys.argv[1]):
    print("  " + line.rstrip())
EOF
