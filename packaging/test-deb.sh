#!/usr/bin/env bash
# Installs the package built by make deb on this host, checks what it put
# there, runs iserd from it as the unit would, then removes and purges it
# and lists every file left behind that was not there before. Needs root;
# changes the host's package database (dpkg -i / -r / -P).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls bin/iserd_*.deb | tail -1)
[ "$(id -u)" -eq 0 ] || { echo "test-deb: needs root (dpkg -i)" >&2; exit 1; }
if dpkg-query -W iserd >/dev/null 2>&1; then echo "test-deb: iserd is already installed" >&2; exit 1; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# snapshot lists the files and directories outside dpkg's own bookkeeping.
snapshot() {
	find /etc /usr /var /lib /opt /srv /run -xdev \
		\( -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /var/tmp -o -path /var/lib/apt \
		-o -path /usr/lib/go -o -path /run/user -o -path /var/lib/systemd/deb-systemd-helper-enabled \) -prune -o -print 2>/dev/null |
		sort
}
# strays: new paths, less /run/systemd/systemd-units-load, the timestamp systemd-analyze verify
# itself writes on every run (not the package's).
strays() {
	comm -13 "$work/before" <(snapshot) |
		grep -v -e '^/run/iserd-vm' -e '^/tmp' -e '^/run/systemd/systemd-units-load$' || true
}
snapshot >"$work/before"
fail=0
check() { if "$@"; then echo "ok: $*"; else echo "FAILED: $*"; fail=1; fi; }

dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
echo "installed $deb: $(dpkg -L iserd | wc -l) paths"
check test "$(stat -c %a /etc/iserd/iserd.yaml)" = 600
check test "$(stat -c %a /var/lib/iserd)" = 700
check grep -qx /etc/iserd/iserd.yaml /var/lib/dpkg/info/iserd.conffiles
check systemd-analyze verify /lib/systemd/system/iserd.service
for p in man8/iserd.8 man8/iserctl.8 man5/iserd.yaml.5; do
	check sh -c "MANPAGER=cat man -l /usr/share/man/$p.gz | grep -q NAME"
done
check sh -c '/usr/sbin/iserd -version | grep -q "^iserd 0"'
check sh -c '/usr/bin/iserctl version | grep -q "^iserctl 0"'
check bash -c 'source /usr/share/bash-completion/bash_completion; _completion_loader iserctl; complete -p iserctl | grep -q __start_iserctl'

# As the unit runs it: the packaged configuration, the default socket (which
# another iserd must not hold already).
if /usr/bin/iserctl target list >/dev/null 2>&1; then
	echo "test-deb: another iserd serves /run/iserd/admin.sock; stop it first" >&2
	dpkg -P iserd >>"$work/dpkg.log" 2>&1
	exit 1
fi
/usr/sbin/iserd --config /etc/iserd/iserd.yaml >"$work/iserd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S /run/iserd/admin.sock ] && break; sleep 0.1; done
check sh -c '/usr/bin/iserctl target list | grep -q iqn.2026-11.org.iserd:disk0'
check test -f /var/lib/iserd/lun0.img
if command -v promtool >/dev/null; then
	check sh -c '/usr/bin/iserctl metrics | promtool check metrics'
fi
kill -TERM $pid
wait $pid || { echo "iserd exited with $?"; cat "$work/iserd.log"; fail=1; }

dpkg -r iserd >>"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
echo "after dpkg -r, new paths (expected: the conffile and the LUN the service created):"
strays | sed 's/^/  /'
dpkg -P iserd >>"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log"; exit 1; }
left=$(strays)
echo "after dpkg -P, new paths: ${left:-none}"
[ -z "$left" ] || fail=1
exit $fail
