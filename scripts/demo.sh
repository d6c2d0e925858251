#!/usr/bin/env bash
# Starts netslotd with its default pool (4,000 slots), then acquires a slot,
# shows what a VM launcher gets, and releases it. The daemon keeps running;
# the last lines say how to stop it and remove every slot.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"

mkdir -p bin
go build -o bin/ ./cmd/netslotd ./cmd/netslot
SOCK=/run/netslot/netslot.sock
LOG=/var/log/netslotd.log
ns=./bin/netslot

if $ns --socket "$SOCK" status >/dev/null 2>&1; then
  echo "== netslotd is already running on $SOCK"
else
  echo "== starting netslotd (4,000 slots; log: $LOG)"
  nohup ./bin/netslotd >"$LOG" 2>&1 &
  echo $! >/run/netslot-demo.pid
  sleep 0.5
fi

echo "== boot progress"
for _ in $(seq 600); do
  if ! st=$($ns --socket "$SOCK" status -o json 2>/dev/null); then
    if [ -f /run/netslot-demo.pid ] && ! kill -0 "$(cat /run/netslot-demo.pid)" 2>/dev/null; then
      echo "netslotd exited:"; tail -20 "$LOG"; exit 1
    fi
    sleep 0.2; continue
  fi
  case "$st" in *'"ready":true'*) break ;; esac
  echo "$st" | sed -E 's/.*"boot":\{"ready":([0-9]+).*"slots_per_second":([0-9.]+).*"eta_seconds":([0-9.]+).*/  \1 slots ready, \2 slots\/s, eta \3 s/'
  sleep 1
done
$ns --socket "$SOCK" status

echo
echo "== acquire (what a VM launcher gets)"
slot=$($ns --socket "$SOCK" acquire --owner demo-vm -o json)
echo "$slot"
id=$(echo "$slot" | sed -E 's/.*"id":"([^"]+)".*/\1/')
echo
$ns --socket "$SOCK" show "$id"
echo
echo "== inside $id"
ip netns exec "$id" ip -br addr
ip netns exec "$id" ip route
echo
echo "== release"
$ns --socket "$SOCK" release "$id"
$ns --socket "$SOCK" show "$id" | head -2
echo
$ns --socket "$SOCK" status
echo
pid=$(cat /run/netslot/nslot.lock 2>/dev/null || true)
echo "netslotd keeps running (pid ${pid:-?}). Stop it with: kill ${pid:-<pid>}"
echo "Then remove every slot with: ./bin/netslotd teardown"
