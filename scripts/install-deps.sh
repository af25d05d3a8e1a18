#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use, when missing.
# Needs root for apt-get; without root it only reports what is missing.
set -euo pipefail
pkgs=(libiscsi-bin open-iscsi fio tgt sg3-utils qemu-system-x86 busybox-static rdma-core
      ibverbs-utils ibverbs-providers libibverbs-dev perftest rdmacm-utils e2fsprogs iproute2 kmod cpio zstd
      bash-completion man-db systemd prometheus etcd-server etcd-client multipath-tools dmsetup udev
      targetcli-fb dbus-daemon)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (run as root to install): ${missing[*]}" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/iserd-apt.log 2>&1; then
  apt-get update >>/tmp/iserd-apt.log 2>&1 || true
  apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/iserd-apt.log 2>&1 || {
    echo "install-deps: apt-get could not install ${missing[*]}; see /tmp/iserd-apt.log" >&2
    tail -5 /tmp/iserd-apt.log >&2
    exit 1
  }
fi
# The Debian packages start daemons we do not want competing for port 3260.
systemctl stop tgt iscsid open-iscsi prometheus etcd multipathd 2>/dev/null || true
pkill -x tgtd 2>/dev/null || true
pkill -x etcd 2>/dev/null || true
