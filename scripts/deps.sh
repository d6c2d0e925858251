#!/usr/bin/env bash
# Installs what netslot needs on a Debian machine: Go modules, and the
# tools its tests and demo call (iproute2 for `ip netns exec`, nftables to
# show rules, clang/llvm to check the eBPF objects are current (the headers
# they compile against are vendored in bpf/include),
# tshark to decode Geneve independently, ISC dhclient as a second real DHCP
# client, dnsmasq to compare DHCP with). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: netslot creates namespaces and devices" >&2
  exit 1
fi
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "Go is not installed (expected /usr/local/go)" >&2; exit 1; }

need=()
for pair in ip:iproute2 nft:nftables iptables-legacy-save:iptables conntrack:conntrack ping:iputils-ping \
  clang:clang llvm-strip:llvm tshark:tshark dhclient:isc-dhcp-client dnsmasq:dnsmasq-base; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
go mod download
