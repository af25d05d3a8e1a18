//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysfs lays out files (path -> content) under a temporary root and points sysfsRoot there.
func fakeSysfs(t *testing.T, files map[string]string) {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := sysfsRoot
	sysfsRoot = root
	t.Cleanup(func() { sysfsRoot = old })
}

func rxeSysfs() map[string]string {
	const ib = "class/infiniband/rxe0/"
	return map[string]string{
		"class/infiniband_verbs/uverbs0/ibdev": "rxe0\n",
		"class/infiniband_verbs/abi_version":   "6\n",
		ib + "node_guid":                       "5054:00ff:fe12:3456\n",
		ib + "parent":                          "d0\n",
		ib + "ports/1/state":                   "4: ACTIVE\n",
		ib + "ports/1/link_layer":              "Ethernet\n",
		ib + "ports/1/gids/0":                  "fe80:0000:0000:0000:5054:00ff:fe12:3456\n",
		ib + "ports/1/gids/1":                  "0000:0000:0000:0000:0000:ffff:c000:0201\n",
		ib + "ports/1/gids/2":                  "0000:0000:0000:0000:0000:0000:0000:0000\n",
		ib + "ports/1/gid_attrs/ndevs/0":       "d0\n",
		ib + "ports/1/gid_attrs/ndevs/1":       "d0\n",
	}
}

func TestDevices(t *testing.T) {
	fakeSysfs(t, rxeSysfs())
	devs, err := Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 {
		t.Fatalf("%d devices, want 1", len(devs))
	}
	d := devs[0]
	if d.Name != "rxe0" || d.NodeGUID != 0x505400fffe123456 || d.Parent != "d0" ||
		d.UverbsPath != filepath.Join(devRoot, "infiniband/uverbs0") {
		t.Errorf("device %+v", d)
	}
	if len(d.Ports) != 1 || d.Ports[0].State != "ACTIVE" || d.Ports[0].LinkLayer != "Ethernet" ||
		len(d.Ports[0].GIDs) != 2 || !d.Ports[0].GIDs[1].Equal(net.IPv4(192, 0, 2, 1)) ||
		len(d.Ports[0].Netdevs) != 1 || d.Ports[0].Netdevs[0] != "d0" {
		t.Errorf("ports %+v", d.Ports)
	}
	if d.Driver != "rdma_rxe" {
		t.Errorf("driver %q, want rdma_rxe", d.Driver)
	}
	if p, err := ProviderNative.ProviderFor(d); err != nil || p != "rxe" {
		t.Errorf("native provider for an rxe device: %q, %v", p, err)
	}
	if g, err := DeviceByGUID(0x505400fffe123456); err != nil || g.Name != "rxe0" {
		t.Errorf("DeviceByGUID = %+v, %v", g, err)
	}
	if _, err := DeviceByName("mlx5_0"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("DeviceByName(mlx5_0) = %v, want ErrNoDevice", err)
	}
}

func TestDevicesMissingOrBroken(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(map[string]string)
		noDev bool
	}{
		{"no class directory", func(m map[string]string) { clear(m); m["class/net/lo/mtu"] = "65536" }, true},
		{"no uverbs device", func(m map[string]string) { delete(m, "class/infiniband_verbs/uverbs0/ibdev") }, true},
		{"bad node GUID", func(m map[string]string) { m["class/infiniband/rxe0/node_guid"] = "zz" }, false},
		{"bad GID", func(m map[string]string) { m["class/infiniband/rxe0/ports/1/gids/1"] = "1:2" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := rxeSysfs()
			tt.edit(files)
			fakeSysfs(t, files)
			_, err := Devices()
			if err == nil {
				t.Fatal("Devices succeeded on a broken tree")
			}
			if errors.Is(err, ErrNoDevice) != tt.noDev {
				t.Errorf("Devices: %v; ErrNoDevice expected %v", err, tt.noDev)
			}
		})
	}
}

func TestParseGUID(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0002:c903:0001:2345", 0x0002c90300012345, true},
		{"ffff:ffff:ffff:ffff", ^uint64(0), true},
		{"0002:c903:0001", 0, false},
		{"0002:c903:0001:23456", 0, false},
		{"0002:c903:0001:xyzw", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseGUID(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseGUID(%q) = %#x, %v", tt.in, got, err)
		}
	}
}

func TestSockaddrRoundTrip(t *testing.T) {
	tests := []struct {
		in      string
		size    uint16
		wantErr bool
	}{
		{"192.0.2.1:3260", 16, false},
		{"[2001:db8::1]:7471", 28, false},
		{"0.0.0.0:0", 16, false},
	}
	for _, tt := range tests {
		ap := netip.MustParseAddrPort(tt.in)
		var b [sockaddrStorSize]byte
		n, err := encodeSockaddr(&b, ap)
		if err != nil || n != tt.size {
			t.Errorf("encode %v = %d, %v", ap, n, err)
			continue
		}
		if got := decodeSockaddr(b[:n]); got != ap {
			t.Errorf("round trip of %v gave %v", ap, got)
		}
	}
	var b [sockaddrStorSize]byte
	if _, err := encodeSockaddr(&b, netip.AddrPort{}); err == nil {
		t.Error("encoding the zero address succeeded")
	}
	if got := decodeSockaddr([]byte{1, 2}); got.IsValid() {
		t.Errorf("decoding 2 bytes gave %v", got)
	}
}

func TestEventAndCompletionErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		ok   bool
	}{
		{"cm success", (&CMEvent{Type: CMEstablished}).Err(), true},
		{"cm errno", (&CMEvent{Type: CMAddrError, Status: -110}).Err(), false},
		{"cm reject reason", (&CMEvent{Type: CMRejected, Status: 28}).Err(), false},
		{"wc success", (&WorkCompletion{Status: WCSuccess}).Err(), true},
		{"wc flushed", (&WorkCompletion{Status: WCWRFlushErr}).Err(), false},
	}
	for _, tt := range tests {
		if (tt.err == nil) != tt.ok {
			t.Errorf("%s: %v", tt.name, tt.err)
		}
	}
	if s := WCRetryExcErr.String(); s != "transport retry counter exceeded" {
		t.Errorf("WCRetryExcErr.String() = %q", s)
	}
	if s := CMTimewaitExit.String(); s != "TIMEWAIT_EXIT" {
		t.Errorf("CMTimewaitExit.String() = %q", s)
	}
}

func TestOpenWithoutDevice(t *testing.T) {
	fakeSysfs(t, map[string]string{"class/net/lo/mtu": "65536"})
	if _, err := OpenByName(""); !errors.Is(err, ErrNoDevice) {
		t.Errorf("OpenByName without devices: %v, want ErrNoDevice", err)
	}
	old := cmPath
	cmPath = filepath.Join(t.TempDir(), "rdma_cm")
	defer func() { cmPath = old }()
	if _, err := OpenCM(); !errors.Is(err, ErrNoDevice) {
		t.Errorf("OpenCM without rdma_cm: %v, want ErrNoDevice", err)
	}
}

// TestDevicesForAddr checks the reasons a portal address is refused: loopback has no RDMA
// device here or in the test VM (rxe0 sits on d0), and a documentation address no interface holds.
func TestDevicesForAddr(t *testing.T) {
	tests := []struct {
		addr string
		want string
	}{
		{"127.0.0.1", "network interface lo (address 127.0.0.1) has no RDMA device"},
		{"::ffff:127.0.0.1", "network interface lo (address 127.0.0.1) has no RDMA device"},
		{"198.51.100.77", "no network interface has address 198.51.100.77"},
	}
	for _, tc := range tests {
		devs, err := DevicesForAddr(netip.MustParseAddr(tc.addr))
		if !errors.Is(err, ErrNoDevice) || !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("DevicesForAddr(%s) = %v, %v; want ErrNoDevice saying %q", tc.addr, devs, err, tc.want)
		}
	}
}
