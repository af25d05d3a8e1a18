# Host-side settings and helpers shared by build.sh, run.sh, run-all.sh and can-run.sh.
# Sourced, not executed.
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$VM_DIR/../.." && pwd)
CACHE_DIR=${VM_CACHE_DIR:-$VM_DIR/.cache}
KERNEL_META=linux-image-amd64

die() { echo "vm: $*" >&2; exit 1; }
note() { echo "vm: $*" >&2; }

# kernel_package prints the versioned kernel package (linux-image-6.1.0-NN-amd64) that
# linux-image-amd64 depends on, or the cached one when apt knows none.
kernel_package() {
  local pkg
  pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    pkg=$(cat "$CACHE_DIR/kernel/package" 2>/dev/null) ||
      die "apt knows no $KERNEL_META and no kernel is cached; run 'apt-get update'"
  fi
  echo "$pkg"
}

# fetch_kernel PACKAGE downloads the kernel package into the cache unless it is there
# already, and prints the path of the .deb. When the download fails, an older cached kernel
# is used if there is one.
fetch_kernel() {
  local pkg=$1 dir=$CACHE_DIR/kernel deb
  mkdir -p "$dir"
  deb=$(ls "$dir/${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    note "downloading $pkg"
    (cd "$dir" && timeout 600 apt-get download -q -o APT::Sandbox::User=root \
        -o Acquire::http::Timeout=30 -o Acquire::Retries=2 "$pkg" >"$dir/download.log" 2>&1) || {
      tail -5 "$dir/download.log" >&2
      deb=$(ls "$dir"/linux-image-*.deb 2>/dev/null | head -1 || true)
      [ -n "$deb" ] || die "could not download the kernel package $pkg (apt-get download failed; see $dir/download.log)"
      note "could not download $pkg; using the cached $(basename "$deb")"
      echo "$deb"
      return
    }
    deb=$(ls "$dir/${pkg}"_*.deb 2>/dev/null | head -1 || true)
    [ -n "$deb" ] || die "apt-get download reported success but no $pkg .deb is in $dir"
    find "$dir" -name '*.deb' ! -path "$deb" -delete   # older kernels
    echo "$pkg" >"$dir/package"
  fi
  echo "$deb"
}

VM_ADDR=192.0.2.1
VM_INITIATOR=iqn.2024-01.test.iserd:vm-initiator
VM_LOCK=${VM_LOCK:-/tmp/iserd-vm.lock}
BOOT_ALLOWANCE=120        # seconds for boot and setup on top of the scenarios' own limits
DEFAULT_SCENARIO_TIMEOUT=300

# scenario_timeout FILE: $VM_SCENARIO_TIMEOUT when set (for runs whose length is chosen at run
# time, such as make soak), else the scenario's "# vm-timeout: N" header, else the default.
scenario_timeout() {
  local t
  if [ -n "${VM_SCENARIO_TIMEOUT:-}" ]; then
    [[ $VM_SCENARIO_TIMEOUT =~ ^[0-9]+$ ]] || die "VM_SCENARIO_TIMEOUT=$VM_SCENARIO_TIMEOUT is not a number of seconds"
    echo "$VM_SCENARIO_TIMEOUT"
    return
  fi
  t=$(sed -n 's/^# vm-timeout: *\([0-9][0-9]*\).*/\1/p' "$1" | head -1)
  echo "${t:-$DEFAULT_SCENARIO_TIMEOUT}"
}

# build_run_layer TIMEOUT TOKEN FILE...: writes $CACHE_DIR/run/initrd, the base initramfs
# followed by a small cpio with /init, lib.sh, the scenarios, the programs in bin/ and those
# in $VM_TESTBIN_DIR (when set).
build_run_layer() {
  local timeout=$1 token=$2 root=$CACHE_DIR/run/root f name list=
  shift 2
  rm -rf "$root"
  mkdir -p "$root"/usr/{bin,lib/vm/scenarios,local/bin} "$root/etc"
  install -m 755 "$VM_DIR/init.sh" "$root/init"
  cp "$VM_DIR/lib.sh" "$root/usr/lib/vm/"
  for f in "$@"; do
    name=$(basename "$f" .sh)
    [[ $name =~ ^[A-Za-z0-9._-]+$ ]] || die "scenario name '$name' may only use letters, digits, '.', '_' and '-'"
    [ ! -e "$root/usr/lib/vm/scenarios/$name.sh" ] || die "two scenarios are named $name"
    cp "$f" "$root/usr/lib/vm/scenarios/$name.sh"
    list="$list $name=$(scenario_timeout "$f")"
  done
  for f in "$REPO_DIR"/bin/*; do
    [ -f "$f" ] && install -m 755 "$f" "$root/usr/bin/"
  done
  if [ -n "${VM_TESTBIN_DIR:-}" ]; then
    [ -d "$VM_TESTBIN_DIR" ] || die "VM_TESTBIN_DIR=$VM_TESTBIN_DIR is not a directory"
    for f in "$VM_TESTBIN_DIR"/*; do
      [ -f "$f" ] && install -m 755 "$f" "$root/usr/local/bin/"
    done
  fi
  cat >"$root/etc/vm-run.conf" <<CONF
VM_TOKEN=$token
VM_TIMEOUT=$timeout
VM_SCENARIOS="${list# }"
VM_ADDR=$VM_ADDR
VM_INITIATOR=$VM_INITIATOR
CONF
  # Settings for the scenarios: each NAME=VALUE word of $VM_ENV (e.g. VM_ENV="SOAK_MINUTES=6").
  for f in ${VM_ENV:-}; do
    [[ $f =~ ^[A-Z][A-Z0-9_]*=[A-Za-z0-9._:/+-]*$ ]] || die "VM_ENV entry '$f' is not NAME=VALUE (upper-case name, plain value)"
    echo "$f" >>"$root/etc/vm-run.conf"
  done
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$CACHE_DIR/run/layer.cpio"
  cat "$CACHE_DIR/base/base.cpio" "$CACHE_DIR/run/layer.cpio" >"$CACHE_DIR/run/initrd"
  rm -rf "$root"
}

# console_filter TOKEN MODE: turns marker lines into readable ones; MODE "full" passes every
# other line through, "brief" only lines starting with "vm:" or "TIME".
console_filter() {
  local interactive=
  # mawk reads its input in blocks unless told otherwise, which would hold the console back.
  case $(awk -W version 2>&1) in mawk*) interactive="-W interactive" ;; esac
  awk $interactive -v tok="@@VM:$1:" -v mode="$2" '
    index($0, tok) {
      split(substr($0, index($0, tok) + length(tok)), f, ":")
      if (f[1] == "BEGIN") printf "=== %s\n", f[2]
      else if (f[1] == "END") printf "=== %s %s (%ss)\n", (f[3] == 0 ? "PASS" : f[3] == 77 ? "SKIP" : "FAIL, status " f[3] ","), f[2], f[4]
      fflush(); next
    }
    mode == "full" || /^(vm:|TIME )/ { print; fflush() }'
}

# vm_boot TIMEOUT MODE LOG FILE...: boots the VM running the scenario FILEs in turn, streams
# its console (see console_filter) and saves it to LOG. Kills the VM after TIMEOUT seconds.
# Returns 0 when the VM reported a status (see scenario_results), 124 on timeout, 125 when it
# ended without reporting one. Sets VM_STARTED to $SECONDS once no other VM holds the lock.
vm_boot() {
  local timeout=$1 mode=$2 log=$3 token st lock_fd
  shift 3
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed (scripts/install-deps.sh)"
  # One VM at a time on this machine (the CPUs are shared); the lock also guards the cache.
  exec {lock_fd}>"$VM_LOCK"
  if ! flock -n "$lock_fd"; then
    note "waiting for another VM run to finish (lock $VM_LOCK)"
    flock "$lock_fd"
  fi
  VM_STARTED=$SECONDS
  "$VM_DIR/build.sh"
  token=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  build_run_layer "$timeout" "$token" "$@"
  mkdir -p "$(dirname "$log")"
  echo "$token" >"$log.token"
  note "booting (timeout ${timeout}s, console log $log)"
  timeout -k 10 "$timeout" qemu-system-x86_64 -accel "${VM_ACCEL:-tcg}" -cpu max -m 3072 -smp 2 \
    -nographic -no-reboot -nic none -kernel "$CACHE_DIR/base/vmlinuz" -initrd "$CACHE_DIR/run/initrd" \
    -append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 | sed -u 's/\r//g; s/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' | tee "$log" | console_filter "$token" "$mode"
  st=${PIPESTATUS[0]}
  if [ "$st" -eq 124 ] || [ "$st" -eq 137 ]; then
    note "the VM did not finish within ${timeout}s and was killed"
    return 124
  fi
  if ! grep -q "@@VM:$token:DONE:" "$log"; then
    note "the VM ended (qemu status $st) without reporting a status; last console lines:"
    tail -15 "$log" >&2
    return 125
  fi
}

# scenario_results LOG: prints "NAME STATUS SECONDS" for every scenario that finished, and
# "NAME unfinished -" for one that began but did not end.
scenario_results() {
  awk -v tok="@@VM:$(cat "$1.token"):" '
    index($0, tok) {
      split(substr($0, index($0, tok) + length(tok)), f, ":")
      if (f[1] == "BEGIN") open = f[2]
      if (f[1] == "END") { print f[2], f[3], f[4]; open = "" }
    }
    END { if (open != "") print open, "unfinished", "-" }' "$1"
}

# scenario_output LOG NAME: prints the console lines of scenario NAME.
scenario_output() {
  awk -v tok="@@VM:$(cat "$1.token"):" -v name="$2" '
    index($0, tok) {
      split(substr($0, index($0, tok) + length(tok)), f, ":")
      if (f[1] == "BEGIN") on = (f[2] == name)
      if (f[1] == "END") on = 0
      next
    }
    on' "$1"
}

# resolve_scenario NAME|FILE: prints the scenario file (a path, or a name in scenarios/).
resolve_scenario() {
  local f
  for f in "$1" "$VM_DIR/scenarios/$1" "$VM_DIR/scenarios/$1.sh"; do
    [ -f "$f" ] && { echo "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"; return; }
  done
  die "no scenario '$1' (neither a file nor in $VM_DIR/scenarios)"
}
