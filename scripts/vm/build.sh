#!/usr/bin/env bash
# Builds the cached VM base: the Debian kernel (vmlinuz) and a base initramfs holding busybox,
# the kernel modules the tests need and the host's RDMA/iSCSI/storage tools with their shared
# libraries. Both are rebuilt only when their inputs change (kernel package, host package
# versions, this script). Prints nothing on success but progress notes on stderr.
# The per-run layer (init, helpers, scenarios, project binaries) is added by run.sh.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Kernel modules to include; their dependencies are resolved from the kernel's modules.dep.
MODULES=(configfs crc32_generic crc32c_generic crc32c-intel crc32-pclmul
  rdma_rxe ib_uverbs rdma_ucm ib_iser iscsi_tcp
  target_core_mod target_core_file target_core_iblock iscsi_target_mod ib_isert
  dummy veth ext4 sd_mod sg loop brd null_blk inet_diag tcp_diag
  dm_mod dm_multipath dm_round_robin dm_service_time scsi_dh_alua)
# Packages whose every ELF program under bin/ or sbin/ is included (GNU coreutils so that
# scenarios get the usual options; busybox fills in the rest).
PACKAGES=(open-iscsi fio sg3-utils libiscsi-bin ibverbs-utils rdmacm-utils perftest tgt coreutils etcd-server etcd-client)
# Packages copied whole but for documentation: their rules, plugins and data files matter too.
WHOLE_PACKAGES=(udev dmsetup multipath-tools)
WHOLE_SKIP='^/usr/share/(doc|man|lintian|bash-completion|zsh|fish)/'
# Python packages, copied whole too (but what PYTHON_SKIP names) with the byte code Debian
# compiled for them: targetcli-fb (LIO's configuration shell), the interpreter and the modules
# it imports; gi is for user backstores (tcmu) only, but targetcli imports it at start.
PY=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || PY=none
PYTHON_PACKAGES=(python3-minimal "python$PY-minimal" "libpython$PY-minimal" "libpython$PY-stdlib"
  targetcli-fb python3-rtslib-fb python3-configshell-fb python3-six python3-pyparsing python3-urwid
  python3-pyudev python3-gi gir1.2-glib-2.0)
# Parts of the standard library targetcli does not import (tests, IDLE, Tk, asyncio, e-mail, XML,
# databases, CJK codecs, build files), init scripts and service units.
PYTHON_SKIP='^/usr/share/|^/etc/init\.d/|/systemd/|/python3[.0-9]*/(test|idlelib|tkinter|turtledemo|lib2to3|ensurepip|pydoc_data|distutils|config-[^/]*|asyncio|email|xml|xmlrpc|multiprocessing|unittest|sqlite3|dbm|curses|venv|wsgiref)/|/lib-dynload/(_sqlite3|_dbm|_gdbm|_curses|_test|_ctypes_test|xxlimited|_codecs_|audioop|_tkinter)'
# Single programs from other packages (dbus-daemon: targetcli connects to the system bus at start).
PROGRAMS=(/usr/sbin/ip /usr/bin/rdma /usr/bin/ss /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/bin/bash /usr/bin/dbus-daemon)
# Loaded with dlopen, so ldd does not list them: the rxe verbs provider, libgcc_s that glibc
# loads for pthread_cancel, libibverbs that iserd's libibverbs provider loads, the libc parts a
# Go binary built with purego (CGO_ENABLED=0) names as DT_NEEDED (libdl, libpthread), and
# libudev that rtslib-fb loads through pyudev (ctypes).
DLOPENED=(/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
  /usr/lib/x86_64-linux-gnu/libibverbs.so.1 /usr/lib/x86_64-linux-gnu/libdl.so.2
  /usr/lib/x86_64-linux-gnu/libpthread.so.0 /usr/lib/x86_64-linux-gnu/libudev.so.1)
HOST_PACKAGES=("${PACKAGES[@]}" "${WHOLE_PACKAGES[@]}" "${PYTHON_PACKAGES[@]}" busybox-static iproute2 e2fsprogs
  bash rdma-core ibverbs-providers libc6 libudev1 dbus-daemon dbus-session-bus-common)

BASE=$CACHE_DIR/base
ROOT=$CACHE_DIR/base-root

# copy_file SRC: copies SRC (following symlinks) to the same path under $ROOT.
copy_file() {
  local dst=$ROOT$1
  mkdir -p "$(dirname "$dst")"
  rm -f "$dst"
  cp -L "$1" "$dst"
}

# copy_elf PROGRAM: copies a program or library and every shared library ldd says it needs.
copy_elf() {
  local lib
  copy_file "$1"
  for lib in $(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    [ -e "$ROOT$lib" ] || copy_file "$lib"
  done
}

# copy_package PKG SKIP: copies every file of PKG whose path does not match the regular
# expression SKIP: programs and libraries with what they need, symbolic links to files as links
# (and what they point to), and with each .py file the byte code compiled for it (timestamps
# kept, so that Python uses it).
copy_package() {
  local f dst to pyc
  for f in $(dpkg -L "$1" | grep -vE "$2"); do
    [ -d "$f" ] && continue               # directories (also /lib -> usr/lib) come with their files
    [ -e "$f" ] || continue
    dst=$ROOT$f
    mkdir -p "$(dirname "$dst")"
    if [ -L "$f" ]; then
      rm -f "$dst"
      cp -P "$f" "$dst"
      to=$(readlink -f "$f")
      [ -e "$ROOT$to" ] || { if is_elf "$to"; then copy_elf "$to"; else copy_file "$to"; fi; }
    elif is_elf "$f"; then
      copy_elf "$f"
    else
      cp --preserve=mode,timestamps "$f" "$dst"
      [[ $f == *.py ]] || continue
      for pyc in "$(dirname "$f")/__pycache__/$(basename "$f" .py)".*.pyc; do
        [ -f "$pyc" ] || continue
        mkdir -p "$ROOT$(dirname "$pyc")"
        cp --preserve=mode,timestamps "$pyc" "$ROOT$pyc"
      done
    fi
  done
}

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null)" = $'\x7fELF' ]; }

pkg=$(kernel_package)
deb=$(fetch_kernel "$pkg")
kver=$(basename "$deb" | sed 's/^linux-image-\([^_]*\)_.*/\1/')
versions=$(dpkg-query -W -f='${Package}=${Version}\n' "${HOST_PACKAGES[@]}" 2>/dev/null) ||
  die "host packages missing (run scripts/install-deps.sh as root): $(dpkg-query -W "${HOST_PACKAGES[@]}" 2>&1 | grep -i 'no packages' | tr '\n' ' ')"
stamp=$( { basename "$deb"; echo "$versions"; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$BASE/stamp" ] && [ "$(cat "$BASE/stamp")" = "$stamp" ] && [ -f "$BASE/vmlinuz" ] && [ -f "$BASE/base.cpio" ]; then
  exit 0
fi

note "building base initramfs for kernel $kver"
tmp=$CACHE_DIR/kernel-x
rm -rf "$tmp" "$ROOT" "$BASE"
mkdir -p "$tmp" "$BASE"
dpkg-deb -x "$deb" "$tmp" || die "could not extract $deb"
depmod -b "$tmp" "$kver"

mkdir -p "$ROOT"/usr/{bin,sbin,lib,lib64} "$ROOT"/{dev,proc,sys,run,tmp,etc,var,root}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done
ln -s ../run "$ROOT/var/run"

# Kernel and modules (with their dependencies), then a modules.dep for just those.
cp "$tmp/boot/vmlinuz-$kver" "$BASE/vmlinuz"
for m in "${MODULES[@]}"; do
  modprobe -d "$tmp" -S "$kver" --show-depends "$m" >"$tmp/deps" || die "kernel $kver has no module $m"
  while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    rel=${path#"$tmp"}
    mkdir -p "$ROOT$(dirname "$rel")"
    cp "$path" "$ROOT$rel"
  done <"$tmp/deps"
done
cp "$tmp/lib/modules/$kver"/modules.{builtin,builtin.modinfo,order} "$ROOT/lib/modules/$kver/"
depmod -b "$ROOT" "$kver"
rm -rf "$tmp"

# Host programs with their libraries.
for p in "${PACKAGES[@]}"; do
  for f in $(dpkg -L "$p" | grep -E '/s?bin/[^/]+$'); do
    [ -f "$f" ] && is_elf "$f" && copy_elf "$f"
  done
done
for p in "${WHOLE_PACKAGES[@]}"; do copy_package "$p" "$WHOLE_SKIP"; done
for p in "${PYTHON_PACKAGES[@]}"; do copy_package "$p" "$PYTHON_SKIP"; done
mkdir -p "$ROOT/etc/rtslib-fb-target/backup"
for f in "${PROGRAMS[@]}" "${DLOPENED[@]}"; do copy_elf "$f"; done
ln -sf mke2fs "$ROOT/usr/sbin/mkfs.ext4"
ln -sf e2fsck "$ROOT/usr/sbin/fsck.ext4"

# busybox for everything else (never shadowing a real program).
copy_file /bin/busybox
for a in $(busybox --list); do
  [ -e "$ROOT/usr/bin/$a" ] || [ -e "$ROOT/usr/sbin/$a" ] || ln -s busybox "$ROOT/usr/bin/$a"
done

# Configuration files.
mkdir -p "$ROOT"/etc/{libibverbs.d,iscsi/ifaces} "$ROOT"/var/lib/iscsi
cp /etc/libibverbs.d/rxe.driver "$ROOT/etc/libibverbs.d/"
cp /etc/mke2fs.conf "$ROOT/etc/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"
printf '127.0.0.1 localhost\n192.0.2.1 vm\n' >"$ROOT/etc/hosts"
echo 5d0c3a7e9b1f4e2a8c6d0b9a7f3e1c25 >"$ROOT/etc/machine-id"
# D-Bus: init.sh serves Debian's session bus configuration (everything allowed) as the system bus.
mkdir -p "$ROOT/usr/share/dbus-1"
cp /usr/share/dbus-1/session.conf "$ROOT/usr/share/dbus-1/"
# Short timeouts so that a broken target fails a test quickly instead of stalling it.
cat >"$ROOT/etc/iscsi/iscsid.conf" <<'CONF'
node.startup = manual
node.session.timeo.replacement_timeout = 10
node.conn[0].timeo.login_timeout = 10
node.conn[0].timeo.logout_timeout = 10
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.initial_login_retry_max = 2
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 20
node.session.err_timeo.tgt_reset_timeout = 20
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.HeaderDigest = None
discovery.sendtargets.iscsi.MaxRecvDataSegmentLength = 32768
CONF

(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$BASE/base.cpio.tmp"
mv "$BASE/base.cpio.tmp" "$BASE/base.cpio"
echo "$kver" >"$BASE/kver"
echo "$stamp" >"$BASE/stamp"
rm -rf "$ROOT"
note "base ready: $(du -h "$BASE/base.cpio" | cut -f1) initramfs, kernel $kver"
