#!/usr/bin/env bash
# Exits 0 when the VM tests can run here: qemu-system-x86_64 is installed and the Debian
# kernel is cached or apt can fetch it. Prints the reason on stderr otherwise.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not installed"
[ -f "$CACHE_DIR/base/vmlinuz" ] && exit 0
pkg=$(kernel_package)
fetch_kernel "$pkg" >/dev/null
