#!/usr/bin/env bash
# Builds bin/iserd_VERSION_ARCH.deb with dpkg-deb (make deb). VERSION is the
# newest entry of packaging/changelog. The manual pages, completions and
# /etc/iserd/iserd.yaml come from the binaries just built, so they match.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n '1s/^iserd (\([^)]*\)).*/\1/p' packaging/changelog)
[ -n "$version" ] || { echo "build-deb: no version on the first line of packaging/changelog" >&2; exit 1; }
arch=$(dpkg --print-architecture)
case "$arch" in amd64 | arm64 | riscv64 | ppc64el | s390x) ;; *) echo "build-deb: unsupported architecture $arch" >&2; exit 1 ;; esac
goarch=${arch/ppc64el/ppc64le}
out=bin/deb
root=$out/iserd_${version}_$arch
rm -rf "$out"
mkdir -p "$root/DEBIAN"
export CGO_ENABLED=0 GOOS=linux GOARCH=$goarch
# -buildvcs=auto stamps the git revision when built from a clone.
flags=(-trimpath -buildvcs=auto -ldflags "-s -w -X github.com/iserd/iserd/internal/cli.Release=$version")
go build "${flags[@]}" -o "$root/usr/sbin/iserd" ./cmd/iserd
go build "${flags[@]}" -o "$root/usr/bin/iserctl" ./cmd/iserctl

# Generated from the binaries: manual pages, completions, the conffile.
iserd=$root/usr/sbin/iserd iserctl=$root/usr/bin/iserctl
man=$root/usr/share/man
mkdir -p "$man/man5" "$man/man8" "$out/man"
"$iserd" gendocs "$out/man"
"$iserctl" gendocs "$out/man"
install -m 0644 "$out/man/iserd.8" "$out/man/iserctl.8" "$man/man8/"
install -m 0644 "$out/man/iserd.yaml.5" "$man/man5/"
gzip -9n "$man"/man*/*
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
	"$root/usr/share/fish/vendor_completions.d"
"$iserctl" completion bash >"$root/usr/share/bash-completion/completions/iserctl"
"$iserctl" completion zsh >"$root/usr/share/zsh/vendor-completions/_iserctl"
"$iserctl" completion fish >"$root/usr/share/fish/vendor_completions.d/iserctl.fish"
install -d -m 0700 "$root/etc/iserd" "$root/var/lib/iserd"
"$iserd" default-config /var/lib/iserd >"$root/etc/iserd/iserd.yaml"
chmod 0600 "$root/etc/iserd/iserd.yaml"

install -D -m 0644 packaging/iserd.service "$root/lib/systemd/system/iserd.service"
doc=$root/usr/share/doc/iserd
install -d "$doc/examples"
gzip -9n <packaging/changelog >"$doc/changelog.gz"
install -m 0644 packaging/copyright "$doc/copyright"
install -m 0644 README.md "$doc/"
install -m 0644 contrib/grafana-dashboard.json contrib/prometheus-alerts.yml "$doc/examples/"

echo /etc/iserd/iserd.yaml >"$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
cat >"$root/DEBIAN/control" <<EOC
Package: iserd
Version: $version
Architecture: $arch
Maintainer: iserd developers <iserd@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Section: net
Priority: optional
Depends: libc6
Recommends: bash-completion
Suggests: open-iscsi, rdma-core, libibverbs1, ibverbs-providers
Homepage: https://github.com/iserd/iserd
Description: userspace iSCSI and iSER (RDMA) target
 iserd serves block storage to iSCSI initiators over TCP and over RDMA
 (iSER) from files, block devices or memory, with persistent reservations,
 ALUA, CHAP and ACLs. iserctl changes targets, LUNs, ACLs and portals while
 it runs and imports LIO (targetcli) and tgt configurations.
 .
 The packaged configuration serves one thin 1 GiB LUN on 127.0.0.1:3260;
 the service is not started until enabled (systemctl enable --now iserd).
EOC
deb=bin/iserd_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "built $deb"
