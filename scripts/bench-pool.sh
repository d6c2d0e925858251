#!/usr/bin/env bash
# Measures the pool against the slot pool issue's targets on this machine and
# prints a table: boot time and flatness, restart after kill -9, API
# latency, idle CPU, memory per slot, root rule counts. Usage:
#   scripts/bench-pool.sh [SLOTS]        (default 4000; run as root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
N=${1:-4000}
P=bench
mkdir -p "${BENCH_DIR:=/run/netslot}"
DIR=$(mktemp -d "$BENCH_DIR/bench.XXXX")  # state as the daemon keeps it by default
SOCK=$DIR/netslot.sock
go build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
ns() { ./bin/netslot --socket "$SOCK" "$@"; }
jget() { sed -E "s/.*\"$1\":([^,}]*).*/\1/" | tr -d '"'; }
start() {
  ./bin/netslotd --slots "$1" --prefix $P --state-dir "$DIR/state" --socket "$SOCK" --metrics-addr "" >>"$DIR/log" 2>&1 &
  PID=$!
  until ns status -o json 2>/dev/null | grep -q '"ready":true'; do
    kill -0 $PID 2>/dev/null || { tail "$DIR/log"; exit 1; }
    sleep 0.1
  done
}
stop() { kill -9 "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
teardown() { ./bin/netslotd teardown --prefix $P --state-dir "$DIR/state" >/dev/null 2>&1; }
rules() { nft -a list ruleset 2>/dev/null | grep '# handle' | grep -cvE '^\s*(table|chain|set|map|flowtable) ' || true; }
legacy() { { iptables-legacy-save 2>/dev/null; ip6tables-legacy-save 2>/dev/null; } | grep -c '^-A' || true; }
mem_kb() { awk '/^(Slab|KernelStack|PageTables):/ {s+=$2} END {print s}' /proc/meminfo; }
# settle waits until the kernel has dismantled namespaces torn down before
# (their cleanup runs in the background and would be measured as ours).
settle() {
  local prev=-1 cur same=0
  for _ in $(seq 120); do
    cur=$(awk '$1 == "net_namespace" {print $2}' /proc/slabinfo)
    if [ "$cur" = "$prev" ]; then same=$((same + 1)); else same=0; fi
    [ $same -ge 3 ] && return 0
    prev=$cur; sleep 1
  done
}
trap 'stop; teardown; rm -rf "$DIR" /run/netslot/$P.lock' EXIT

teardown; settle
echo "measuring with $N slots on $(nproc) cores, kernel $(uname -r)" >&2
sync; echo 3 >/proc/sys/vm/drop_caches
r0=$(rules); l0=$(legacy); m0=$(mem_kb)
start 100
r100=$(( $(rules) - r0 )); l100=$(( $(legacy) - l0 ))
stop; teardown; settle
start "$N"
st=$(ns status -o json)
boot=$(echo "$st" | jget boot_seconds); first=$(echo "$st" | jget ms_per_slot_first_tenth); last=$(echo "$st" | jget ms_per_slot_last_tenth)
rN=$(( $(rules) - r0 )); lN=$(( $(legacy) - l0 ))
sync; echo 3 >/proc/sys/vm/drop_caches; sleep 1
kmem=$(( $(mem_kb) - m0 )); rss=$(awk '/VmRSS/ {print $2}' /proc/$PID/status)
t0=$(awk '{print $14+$15}' /proc/$PID/stat); sleep 10; t1=$(awk '{print $14+$15}' /proc/$PID/stat)
idle=$(awk -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b-a)/hz/10*100}')
lat=$(ns bench api -n 3000)
acq99=$(echo "$lat" | awk '/^ *acquire/ {print $5}'); rel99=$(echo "$lat" | awk '/release/ {print $6}')
held=$(( N / 10 ))
for _ in $(seq $held); do ns acquire --owner bench -o json >/dev/null; done
before=$(ls /run/netns | grep -c "^$P-" || true)
stop
start "$N"
st=$(ns status -o json)
rboot=$(echo "$st" | jget boot_seconds); adopted=$(echo "$st" | jget adopted); created=$(echo "$st" | jget created); leased=$(echo "$st" | jget leased)
after=$(ls /run/netns | grep -c "^$P-" || true)

printf '\n| metric | target | measured |\n|---|---|---|\n'
printf '| %s slots ready (fresh boot) | <= 12 s (4,000) | %.2f s |\n' "$N" "$boot"
printf '| ms per slot, first / last tenth | last within 1.3x | %.3f / %.3f (%.2fx) |\n' "$first" "$last" "$(awk -v a="$first" -v b="$last" 'BEGIN {print b/a}')"
printf '| acquire through the API, p99 | <= 1 ms | %s |\n' "$acq99"
printf '| release with scrub through the API, p99 | <= 5 ms | %s |\n' "$rel99"
printf '| restart after kill -9, %d leased | <= 2 s | %.2f s (adopted %s, created %s, leased %s of %d) |\n' "$held" "$rboot" "$adopted" "$created" "$leased" "$held"
printf '| namespaces before / after restart | equal | %s / %s |\n' "$before" "$after"
printf '| root nftables rules, 100 / %s slots | equal, <= 144 | %s / %s |\n' "$N" "$r100" "$rN"
printf '| root legacy iptables rules, 100 / %s slots | equal | %s / %s |\n' "$N" "$l100" "$lN"
printf '| idle daemon CPU (10 s) | < 1 %% of a core | %s %% |\n' "$idle"
printf '| daemon RSS per slot | measured | %.1f KiB |\n' "$(awk -v r="$rss" -v n="$N" 'BEGIN {print r/n}')"
printf '| kernel memory per slot (slab+stacks+page tables) | measured | %.1f KiB |\n' "$(awk -v k="$kmem" -v n="$N" 'BEGIN {print k/n}')"
printf '\nAPI latency (%s):\n%s\n' "netslot bench api -n 3000" "$lat"
