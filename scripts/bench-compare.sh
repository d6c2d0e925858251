#!/usr/bin/env bash
# Compares the datapath's per-packet cost and acquire/release latency of
# the working tree against an earlier revision, side by side in one run:
# both builds alternate (which goes first alternates too), each run builds
# its own lab, and the replaced design's figures in each run show how the
# machine itself moved meanwhile.
#
#   scripts/bench-compare.sh REV [ROUNDS] [SLOTS]   (as root; ROUNDS 3, SLOTS 1000)
#
# Prints, per run and as medians over runs: TCP connections/s through slot
# 0 and slot N-1, the UDP round trip (p50/p99) at slot 0 and slot N-1, the
# in-process acquire and acquire+VPC p50, and release p50.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: $0 REV [ROUNDS] [SLOTS]}
rounds=${2:-3}
slots=${3:-1000}
[ "$(id -u)" -eq 0 ] || { echo "run as root: the bench builds namespaces and devices" >&2; exit 1; }
./scripts/deps.sh >/dev/null
export PATH="/usr/local/go/bin:$PATH"

work=$(mktemp -d /tmp/netslot-compare.XXXXXX)
trap 'rm -rf "$work/src"' EXIT
mkdir -p "$work/src" "$work/old" "$work/new"
git archive "$rev" | tar -x -C "$work/src"
(cd "$work/src" && go build -o "$work/old/" ./cmd/...)
go build -o "$work/new/" ./cmd/...
echo "old: $(git rev-parse --short "$rev"); new: the working tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + changes')); logs in $work"

# cell FILE ROW COL: column COL (1-based, of | separated cells) of the first
# table row that starts with ROW.
cell() { awk -F'|' -v row="$2" -v col="$3" 'index($2, row) == 2 { gsub(/^ +| +$/, "", $(col+1)); print $(col+1); exit }' "$1"; }

run() { # which round
  # Revisions before netslot-bench ran the lab benchmarks as netslot bench.
  local out=$work/$1-$2 bin=("$work/$1/netslot-bench")
  [ -x "${bin[0]}" ] || bin=("$work/$1/netslot" bench)
  "${bin[@]}" datapath --slots "$slots" --rounds 1 --rtt-samples 1000 >"$out.datapath" 2>"$out.datapath.log"
  "${bin[@]}" attach --slots 64 --samples 100 >"$out.attach" 2>"$out.attach.log"
  local d=$out.datapath a=$out.attach n=$((slots - 1))
  printf '| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" \
    "$(cell "$d" "TCP connections/s, slot 0 " 3 | cut -d' ' -f1)" \
    "$(cell "$d" "TCP connections/s, slot $n " 3 | cut -d' ' -f1)" \
    "$(cell "$d" "UDP round trip, slot 0 (with" 3)" \
    "$(cell "$d" "UDP round trip, slot $n " 3)" \
    "$(cell "$d" "TCP connections/s, slot 0 " 2 | cut -d' ' -f1)" \
    "$(cell "$a" "netslot acquire, in-process" 2)" \
    "$(cell "$a" "netslot acquire + VPC attach, in-process" 2)" \
    "$(cell "$a" "netslot release (scrub), in-process" 2)"
}

echo
echo "| build | round | conn/s slot 0 | conn/s slot $((slots - 1)) | RTT slot 0 p50 / p99 | RTT slot $((slots - 1)) p50 / p99 | replaced design conn/s slot 0 | acquire p50 | acquire+VPC p50 | release p50 |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for b in $order; do run "$b" "$r" | tee -a "$work/rows"; done
done

echo
echo "Medians over $rounds rounds (new / old):"
awk -F'|' '
  function us(s,   v) { v = s; gsub(/[^0-9.]/, "", v); return s ~ /ms/ ? v * 1000 : v + 0 }
  function med(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { b = $2; gsub(/ /, "", b); k = ++n[b]
    split($6, r0, "/"); split($7, rn, "/")
    v[b, 1, k] = $4 + 0; v[b, 2, k] = $5 + 0; v[b, 3, k] = us(r0[1]); v[b, 4, k] = us(rn[1])
    v[b, 5, k] = us($9); v[b, 6, k] = us($10); v[b, 7, k] = us($11); v[b, 8, k] = $8 + 0 }
  END {
    split("conn/s slot 0|conn/s slot N-1|RTT p50 slot 0 (us)|RTT p50 slot N-1 (us)|acquire p50 (us)|acquire+VPC p50 (us)|release p50 (us)|replaced design conn/s slot 0", name, "|")
    for (m = 1; m <= 8; m++) {
      for (i = 1; i <= n["old"]; i++) o[i] = v["old", m, i]
      for (i = 1; i <= n["new"]; i++) w[i] = v["new", m, i]
      mo = med(o, n["old"]); mw = med(w, n["new"])
      printf "  %-34s old %10.1f   new %10.1f   new/old %.3f\n", name[m], mo, mw, (mo ? mw / mo : 0)
    }
  }' "$work/rows"
