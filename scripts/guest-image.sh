#!/usr/bin/env bash
# Builds the Linux guest that internal/testutil boots with qemu (TCG) for
# end-to-end network tests: OUTDIR/vmlinuz and OUTDIR/initramfs.cpio.gz.
#
#   scripts/guest-image.sh [OUTDIR]    (default ${NETSLOT_GUEST_DIR:-/var/cache/netslot-guest})
#
# Installs qemu-system-x86 when qemu-system-x86_64 is missing (exit 77 if
# it cannot), then, unless both outputs exist and are newer than this
# script, downloads (never installs) Debian's cloud kernel image and
# busybox-static and builds the initramfs from them: busybox, the host's
# iproute2 `ip` (busybox's cannot add geneve links), OpenBSD netcat (busybox
# nc has no UDP mode) with the libraries ldd lists, and the virtio-net and
# geneve modules with their dependencies.
#
# The guest's /init loads the modules, brings lo up, prints
# "NETSLOT-START <uptime>", runs the shell script given on the kernel command
# line as netslot.script=<base64> (or netslot.scriptgz=<base64 of gzip>),
# prints "NETSLOT-EXIT <status>" and powers off. Run it with
# console=ttyS0 quiet; see internal/testutil/vm.go.
set -euo pipefail
trap 'echo "guest-image: failed at line $LINENO" >&2' ERR

script=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
out=${1:-${NETSLOT_GUEST_DIR:-/var/cache/netslot-guest}}

# Modules the guest loads, in this order; their dependencies (modinfo
# depends) are put before them and built-in ones are skipped.
want=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  failover net_failover virtio_net udp_tunnel ip6_udp_tunnel geneve)

export DEBIAN_FRONTEND=noninteractive
updated=
apt_update() {
  if [ -z "$updated" ]; then
    apt-get update -qq
    updated=1
  fi
}
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "guest-image: $1 needs root" >&2
    exit 1
  fi
}

if ! command -v qemu-system-x86_64 >/dev/null; then
  need_root "installing qemu-system-x86"
  echo "guest-image: installing qemu-system-x86" >&2
  if ! { apt_update && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null; } ||
    ! command -v qemu-system-x86_64 >/dev/null; then
    echo "guest-image: qemu-system-x86_64 cannot be installed" >&2
    exit 77
  fi
fi

# The image is this script's output: it is current when it was built by
# this very script (its hash, not its date: a checkout's dates say little).
stamp=$(sha256sum "$script" | cut -d' ' -f1)
fresh() {
  [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ] &&
    [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]
}
fresh && exit 0

need_root "building the guest image"
mkdir -p "$out"
# One build at a time (test packages may run in parallel).
exec 9>"$out/.lock"
flock 9
fresh && exit 0

need=()
for pair in ip:iproute2 cpio:cpio gzip:gzip xz:xz-utils zstd:zstd ldd:libc-bin flock:util-linux; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "guest-image: installing ${need[*]}" >&2
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d /tmp/netslot-guest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
dl=$tmp/dl x=$tmp/x r=$tmp/root
mkdir -p "$dl" "$x" "$r"
chmod 755 "$tmp"
chown _apt "$dl" 2>/dev/null || true # apt-get download drops to _apt

# Resolve the cloud kernel's image package (linux-image-6.1.0-NN-cloud-amd64).
kpkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ && !n++ { print $2 }'; }
kp=$(kpkg || true)
if [ -z "$kp" ]; then
  apt_update
  kp=$(kpkg)
fi
[ -n "$kp" ] || { echo "guest-image: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
pkgs=("$kp" busybox-static netcat-openbsd)
if ! (cd "$dl" && apt-get download -qq "${pkgs[@]}" >/dev/null 2>&1); then
  apt_update # the lists may name a version the mirror no longer has
  (cd "$dl" && apt-get download -qq "${pkgs[@]}" >/dev/null)
fi
for deb in "$dl"/*.deb; do
  dpkg-deb -x "$deb" "$x"
done

kver=$(basename "$(ls -d "$x"/lib/modules/*/ | head -n1)")
mdir=lib/modules/$kver
echo "guest-image: kernel $kp ($kver)" >&2

# Guest tree.
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/netslot,proc,sys,dev,tmp,run,root}
mknod -m 600 "$r/dev/console" c 5 1
mknod -m 666 "$r/dev/null" c 1 3

install -m 755 "$x/bin/busybox" "$r/bin/busybox"
# Applet links, except ip: the guest has iproute2's. (Busybox-static's sh
# and its exec-ing applets, timeout or xargs, still prefer the applet: see
# etc/netslot/profile below.)
"$r/bin/busybox" --list-full | while read -r p; do
  case "${p##*/}" in ip | busybox) continue ;; esac
  [ -e "$r/$p" ] || ln -s /bin/busybox "$r/$p"
done

copy_bin() { # copy_bin SRC DEST: a dynamic binary and every library ldd lists
  install -D -m 755 "$1" "$r$2"
  ldd "$1" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
    [ -e "$r$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$r$lib"
  done
}
copy_bin "$(command -v ip)" /usr/sbin/ip
copy_bin "$x/bin/nc.openbsd" /usr/bin/nc.openbsd

# Modules with their paths under lib/modules/<ver>/, dependencies first.
declare -A path=() builtin=() seen=()
while read -r f; do
  n=${f##*/}
  n=${n%%.ko*}
  path[${n//-/_}]=$f
done < <(cd "$x/$mdir" && find kernel -name '*.ko*')
while read -r f; do
  n=${f##*/}
  n=${n%.ko}
  builtin[${n//-/_}]=1
done <"$x/$mdir/modules.builtin"

order=()
add() {
  local m=${1//-/_} f dst deps d
  [ -z "${seen[$m]:-}" ] || return 0
  seen[$m]=1
  if [ -n "${builtin[$m]:-}" ]; then
    echo "guest-image: $m is built in" >&2
    return 0
  fi
  f=${path[$m]:-}
  [ -n "$f" ] || { echo "guest-image: module $m not in $kp" >&2; exit 1; }
  dst=$mdir/${f%.ko*}.ko
  mkdir -p "$r/${dst%/*}"
  case $f in
  *.ko.xz) xz -dc "$x/$mdir/$f" >"$r/$dst" ;;
  *.ko.zst) zstd -qdc "$x/$mdir/$f" >"$r/$dst" ;;
  *.ko.gz) gzip -dc "$x/$mdir/$f" >"$r/$dst" ;;
  *) cp "$x/$mdir/$f" "$r/$dst" ;;
  esac
  deps=$(tr '\0' '\n' <"$r/$dst" | sed -n 's/^depends=//p')
  for d in ${deps//,/ }; do add "$d"; done
  order+=("/$dst")
}
for m in "${want[@]}"; do add "$m"; done
printf '%s\n' "${order[@]}" >"$r/etc/netslot/modules"

# Busybox-static's sh runs its own applets before it searches PATH, so a
# script's `ip` would be busybox's; this function, which init sources
# before the script, makes it iproute2's.
cat >"$r/etc/netslot/profile" <<'EOF'
ip() { /usr/sbin/ip "$@"; }
EOF

cat >"$r/etc/netslot/udhcpc" <<'EOF'
#!/bin/sh
# udhcpc's script: see the init's dhcp().
case $1 in
bound | renew)
  /usr/sbin/ip addr flush dev "$interface"
  /usr/sbin/ip addr add "$ip/${mask:-$subnet}" dev "$interface"
  [ -z "$mtu" ] || /usr/sbin/ip link set "$interface" mtu "$mtu"
  for r in $router; do /usr/sbin/ip route replace default via "$r" dev "$interface"; break; done
  : >/etc/resolv.conf
  for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
  [ -z "$hostname" ] || hostname "$hostname"
  echo "netslot-init: $interface $ip/$mask via ${router:-none} mtu ${mtu:-none} dns ${dns:-none} hostname ${hostname:-none} from dhcp"
  ;;
esac
exit 0
EOF
chmod 755 "$r/etc/netslot/udhcpc"

cat >"$r/init" <<'EOF'
#!/bin/sh
# netslot guest init: see scripts/guest-image.sh.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/netslot/modules); do
  insmod "$m" || echo "netslot-init: insmod $m failed"
done
/usr/sbin/ip link set lo up
# ip=<client>:<server>:<gw>:<netmask>:<host>:<device>:<autoconf>:<dns0>:<dns1>
# on the command line (a netslot slot's boot_args) configures the device
# with no DHCP, as initramfs-tools' configure_networking does.
apply_ip() {
  IFS=:
  set -f
  set -- $1
  set +f
  IFS=' 	
'
  [ -n "$1" ] || return 0
  dev=${6:-eth0}
  /usr/sbin/ip link set "$dev" up
  /usr/sbin/ip addr add "$1/$4" dev "$dev"
  [ -z "$3" ] || /usr/sbin/ip route add default via "$3"
  : >/etc/resolv.conf
  for d in $8 $9; do echo "nameserver $d" >>/etc/resolv.conf; done
  echo "netslot-init: $dev $1/$4 via ${3:-none} from ip="
}
# ip=dhcp: the device asks DHCP with busybox's udhcpc, whose answer
# /etc/netslot/udhcpc applies (address, router, MTU, DNS, hostname).
dhcp() {
  t0=$(cut -d' ' -f1 /proc/uptime)
  /usr/sbin/ip link set "$1" up
  udhcpc -i "$1" -s /etc/netslot/udhcpc -q -f -n -t 5 -T 2 || { echo "netslot-init: no dhcp lease on $1"; return 1; }
  echo "netslot-init: dhcp from $t0 to $(cut -d' ' -f1 /proc/uptime)"
}
for a in $(cat /proc/cmdline); do
  case $a in
  ip=dhcp | ip=on | ip=any) dhcp eth0 ;;
  ip=*) apply_ip "${a#ip=}" ;;
  esac
done
s=
for a in $(cat /proc/cmdline); do
  case $a in
  netslot.script=*) echo "${a#*=}" | base64 -d >/tmp/netslot.sh && s=1 ;;
  netslot.scriptgz=*) echo "${a#*=}" | base64 -d | gunzip >/tmp/netslot.sh && s=1 ;;
  esac
done
echo "NETSLOT-START $(cut -d' ' -f1 /proc/uptime)"
if [ -n "$s" ]; then
  cd /root
  sh -c '. /etc/netslot/profile && . /tmp/netslot.sh' </dev/null
  st=$?
else
  echo "netslot-init: no netslot.script on the kernel command line"
  st=127
fi
echo "NETSLOT-EXIT $st"
poweroff -f
EOF
chmod 755 "$r/init"

{
  echo "package $kp"
  echo "kernel $kver"
  printf 'module %s\n' "${order[@]}"
} >"$r/etc/netslot/manifest"

(cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) | gzip -9n >"$out/initramfs.cpio.gz.tmp"
cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
cp "$r/etc/netslot/manifest" "$out/manifest"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$stamp" >"$out/stamp"
echo "guest-image: wrote $out/vmlinuz and $out/initramfs.cpio.gz" >&2
