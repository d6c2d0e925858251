#!/usr/bin/env bash
# Starts netslotd with its default pool (4,000 slots) and its uplink on a
# demo fabric (a namespace behind a veth, with an outside host and a VPC
# host behind a Geneve VTEP), then acquires a slot attached to the VPC,
# puts a guest on its tap that configures itself by DHCP (ISC dhclient;
# netslot answers in eBPF on the tap), sends its first packet to the VPC
# host (answered: held while the peer's MAC is learned, not lost) and
# traffic through the NAT, shows the slot's counters, and releases it. The daemon keeps running; the
# last lines say how to stop it and remove everything.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export PATH="/usr/local/go/bin:$PATH"

mkdir -p bin
go build -o bin/ ./cmd/netslotd ./cmd/netslot ./cmd/netslot-bench
SOCK=/run/netslot/netslot.sock
LOG=/var/log/netslotd.log
ns=./bin/netslot
lab="./bin/netslot-bench lab"
# The demo fabric's ranges (block 240 of the lab's: 198.18.240.0/24 and
# 198.19.241.0/24), apart from the test suite's, so that `make test` runs
# beside the demo.
UNDERLAY=198.18.240.2 GATEWAY=198.18.240.1 VTEP=198.18.240.9 OUTSIDE=198.19.241.1 DNS=198.18.240.53

if [ ! -e /run/netns/fdemo ]; then # not ip netns list | grep -q: SIGPIPE under pipefail with thousands of slots
  echo "== demo fabric: namespace fdemo behind uplink veth udemo (198.18.240.0/24 and 198.19.241.0/24, routed nowhere else)"
  $lab fabric --tag demo --block 240
fi

if $ns --socket "$SOCK" status >/dev/null 2>&1; then
  echo "== netslotd is already running on $SOCK"
else
  echo "== starting netslotd (4,000 slots, uplink udemo; log: $LOG)"
  nohup ./bin/netslotd --uplink udemo --underlay-ip $UNDERLAY --uplink-gateway $GATEWAY >"$LOG" 2>&1 &
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
uplink=$($ns --socket "$SOCK" status -o json | sed -nE 's/.*"uplink":"([^"]*)".*/\1/p')
if [ -z "$uplink" ]; then
  echo "(the running netslotd has no uplink: slot traffic stays on the host; restart it to see the datapath)"
fi

echo
echo "== a VPC host (10.9.0.1, vni 4242) behind the fabric's VTEP $VTEP"
guest=
$lab vtep --tag demo --vni 4242 --ip 10.9.0.1 &
vtep=$!
# From here on a failed step stops the background helpers too.
cleanup() {
  [ ! -e /run/netns/gdemo ] || ip netns exec gdemo dhclient -x -pf /run/netslot-demo-dhclient.pid 2>/dev/null || true
  kill $guest "$vtep" 2>/dev/null || true
  wait $guest "$vtep" 2>/dev/null || true
}
trap cleanup EXIT
echo
echo "== acquire, attached to the VPC (what a VM launcher gets)"
slot=$($ns --socket "$SOCK" acquire --owner demo-vm --hostname demo-vm --dns $DNS \
  --vni 4242 --vtep $VTEP --vpc-ip 10.9.0.5 --vpc-cidr 10.9.0.0/24 -o json)
echo "$slot"
id=$(echo "$slot" | sed -E 's/.*"id":"([^"]+)".*/\1/')
lease=$(echo "$slot" | sed -E 's/.*"lease_id":"([^"]+)".*/\1/')
netns=$(echo "$slot" | sed -E 's/.*"netns":"([^"]+)".*/\1/')
echo
echo "== inside $id"
ip netns exec "$id" ip -br addr
ip netns exec "$id" ip route
echo
echo "== a guest on $id's tap0 (a namespace with a kernel network stack, like a VM's), unconfigured"
$lab guest --netns "$netns" --tag demo --bare &
guest=$!
for _ in $(seq 50); do [ -e /run/netns/gdemo ] && break; sleep 0.1; done
sleep 0.3
echo "-- the guest asks DHCP (ISC dhclient); netslot answers on tap0 in eBPF: no process, no socket per slot"
rm -f /run/netslot-demo-dhclient.leases # a fresh guest: DISCOVER, not a remembered lease
ip netns exec gdemo dhclient -4 -1 -v -cf /dev/null -sf ./scripts/dhclient-script \
  -lf /run/netslot-demo-dhclient.leases -pf /run/netslot-demo-dhclient.pid g0 2>&1 |
  grep -E "^(DHCP|bound|dhclient:)" || true
ip netns exec gdemo ip -br addr show g0
echo "-- its first packet to the VPC host 10.9.0.1 (Geneve, vni 4242): held while the peer's MAC is learned, then sent"
ip netns exec gdemo ping -c 1 -W 2 10.9.0.1 | sed -n 2p
echo "-- more to the VPC host, and to the outside host $OUTSIDE (stateless NAT to the slot address)"
ip netns exec gdemo ping -c 3 -i 0.2 10.9.0.1 | tail -2
ip netns exec gdemo ping -c 3 -i 0.2 $OUTSIDE | tail -2
echo
$ns --socket "$SOCK" show "$id"
echo
echo "-- conntrack entries in the root namespace and in $id (slot traffic is never tracked)"
echo "root: $(conntrack -L 2>/dev/null | grep -c -e 100.64. -e 172.16.0.2 || true)   $id: $(ip netns exec "$id" conntrack -L 2>/dev/null | grep -c . || true)"
cleanup
trap - EXIT
echo
echo "== release"
$ns --socket "$SOCK" release "$id" --lease "$lease"
$ns --socket "$SOCK" show "$id" | sed -n 1,2p # sed reads it all: no SIGPIPE for netslot
echo
$ns --socket "$SOCK" status
echo
pid=$(cat /run/netslot/nslot.lock 2>/dev/null || true)
echo "netslotd keeps running (pid ${pid:-?}). Stop it (it drains for 2 s) with:"
echo "  kill ${pid:-<pid>}; while kill -0 ${pid:-<pid>} 2>/dev/null; do sleep 0.2; done"
echo "Then remove every slot with: ./bin/netslotd teardown"
echo "and the demo fabric with: ./bin/netslot-bench lab fabric --tag demo --remove"
