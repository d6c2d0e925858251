#!/usr/bin/env bash
# Runs the whole test suite (scripts/test.sh: gofmt, vet, the generated-code
# check, every test and the fuzz step) N times in a row, each from a fresh
# clone of the committed HEAD, and prints a tally: a suite that passes once
# is not yet a suite that passes every time.
#
#   scripts/test-repeat.sh [--churn] [--other-pool] [N]     (as root; N defaults to 10)
#
# --churn: while the suites run, a background loop adds 200 veth pairs to
# the root namespace and deletes them again, over and over, as a busy host
# does, and a sampler counts how many root-namespace link dumps the kernel
# reported interrupted meanwhile, to show the churn did what it is for. Its pairs are named
# nsrpt<k>a/b and removed when the script ends, however it ends.
#
# --other-pool: the suites run beside another pool of 4,000 slots (prefix
# nrpt, with an uplink on a lab fabric of its own, block 230, and the
# default addressing), as on a host that serves VMs: it is started before
# the first run and torn down when the script ends, however it ends.
#
# Logs stay in the printed directory; exit status is 0 only if every run
# passed. Uncommitted changes are not tested (a fresh clone has none).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

churn=0
other=0
n=10
for a in "$@"; do
  case "$a" in
    --churn) churn=1 ;;
    --other-pool) other=1 ;;
    ''|*[!0-9]*) echo "usage: $0 [--churn] [--other-pool] [N]" >&2; exit 2 ;;
    *) n=$a ;;
  esac
done
if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: the suite creates namespaces and devices" >&2
  exit 1
fi
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "note: uncommitted changes are not tested; the runs use HEAD $(git rev-parse --short HEAD)" >&2

out=$(mktemp -d /tmp/netslot-repeat.XXXXXX)
src=$(pwd)
rev=$(git rev-parse HEAD) # every run tests this commit, whatever lands meanwhile
churn_pid=
other_pid=
cleanup() {
  if [ -n "$churn_pid" ]; then
    kill $churn_pid 2>/dev/null || true
    wait $churn_pid 2>/dev/null || true
  fi
  if [ "$other" = 1 ] && [ -x "$out/bin/netslotd" ]; then
    if [ -n "$other_pid" ]; then
      kill "$other_pid" 2>/dev/null || true
      while kill -0 "$other_pid" 2>/dev/null; do sleep 0.2; done
    fi
    "$out/bin/netslotd" teardown --prefix nrpt --state-dir "$out/other-state" >/dev/null 2>&1 || true
    "$out/bin/netslot-bench" lab fabric --tag rpt --remove >/dev/null 2>&1 || true
  fi
  for k in $(seq 0 199); do ip link del "nsrpt${k}a" 2>/dev/null || true; done
  rm -rf "$out/clone"
}
trap cleanup EXIT

churner() {
  local add=$out/churn-add del=$out/churn-del rounds=0
  for k in $(seq 0 199); do echo "link add nsrpt${k}a type veth peer name nsrpt${k}b"; done >"$add"
  for k in $(seq 0 199); do echo "link del nsrpt${k}a"; done >"$del"
  trap 'echo "churn: $rounds rounds of 200 veth pairs added and deleted" >"$out/churn.txt"; exit 0' TERM
  while :; do
    ip -batch "$add" >/dev/null 2>&1 || true
    ip -batch "$del" >/dev/null 2>&1 || true
    rounds=$((rounds + 1))
  done
}

# sampler dumps the root namespace's links twice a second while the churn
# runs and counts the dumps the kernel reported interrupted.
sampler() {
  local interrupted=0 dumps=0
  trap 'echo "sampler: $interrupted of $dumps root link dumps taken meanwhile were interrupted" >"$out/sampler.txt"; exit 0' TERM
  while :; do
    if ip -o link show 2>&1 >/dev/null | grep -q 'Dump was interrupted'; then interrupted=$((interrupted + 1)); fi
    dumps=$((dumps + 1))
    sleep 0.5
  done
}

if [ "$churn" = 1 ]; then
  churner &
  churn_pid=$!
  sampler &
  churn_pid="$churn_pid $!"
  echo "churn: background loops $churn_pid add and delete 200 veth pairs in the root namespace and sample its link dumps"
fi

if [ "$other" = 1 ]; then
  mkdir -p "$out/bin"
  go build -o "$out/bin/" ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
  "$out/bin/netslot-bench" lab fabric --tag rpt --block 230 >/dev/null
  "$out/bin/netslotd" --prefix nrpt --slots 4000 --state-dir "$out/other-state" --socket "$out/other.sock" \
    --metrics-addr "" --uplink urpt --underlay-ip 198.18.230.2 --uplink-gateway 198.18.230.1 >"$out/other-pool.log" 2>&1 &
  other_pid=$!
  for _ in $(seq 600); do
    case "$("$out/bin/netslot" --socket "$out/other.sock" status -o json 2>/dev/null)" in *'"ready":true'*) break ;; esac
    kill -0 "$other_pid" 2>/dev/null || { echo "the other pool's netslotd exited:"; tail -5 "$out/other-pool.log"; exit 1; }
    sleep 1
  done
  echo "other pool: 4,000 slots of prefix nrpt with an uplink (netslotd pid $other_pid, log $out/other-pool.log)"
fi

pass=0
fail=0
echo "logs: $out; testing $(git rev-parse --short "$rev")"
for i in $(seq 1 "$n"); do
  rm -rf "$out/clone"
  git clone -q "$src" "$out/clone"
  git -C "$out/clone" checkout -q "$rev"
  log=$out/run-$i.log
  start=$(date +%s)
  if (cd "$out/clone" && ./scripts/test.sh) >"$log" 2>&1; then
    pass=$((pass + 1))
    result=pass
  else
    fail=$((fail + 1))
    result="FAIL: $(grep -h -- '--- FAIL' "$log" | sed 's/ (.*//' | tr -s ' ' | sort -u | paste -sd, - || true)"
  fi
  echo "run $i/$n: $result ($(($(date +%s) - start)) s)"
done
if [ -n "$churn_pid" ]; then
  kill $churn_pid
  wait $churn_pid 2>/dev/null || true
  churn_pid=
  cat "$out/churn.txt" "$out/sampler.txt" 2>/dev/null || true
fi
echo "tally: $pass passed, $fail failed of $n runs of the whole suite$([ "$churn" = 1 ] && echo ' under veth churn')$([ "$other" = 1 ] && echo ' beside another 4,000-slot pool')"
[ "$fail" -eq 0 ]
