//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/Mellanox/rdmamap"
	"github.com/vishvananda/netlink"
)

// ErrNoDevice is returned when no RDMA device (or no device of the requested name) exists.
var ErrNoDevice = errors.New("rdma: no RDMA device")

// sysfsRoot is where the class directories are read from; tests point it at a fake tree.
var sysfsRoot = "/sys"

// devRoot is where the character devices live; tests point it at a fake tree.
var devRoot = "/dev"

// Device describes one RDMA device as sysfs shows it.
type Device struct {
	Name       string // kernel name, e.g. "rxe0"
	NodeGUID   uint64 // node GUID in host order (sysfs prints it as four hex groups)
	UverbsPath string // verbs character device, e.g. /dev/infiniband/uverbs0
	Parent     string // netdev an rxe device sits on ("" for hardware devices)
	// Driver is the kernel driver behind the device (e.g. mlx5_core, bnxt_en, irdma, rdma_rxe),
	// "" when sysfs does not say.
	Driver string
	Ports  []Port
}

// driverName is Driver, or "unknown".
func (d *Device) driverName() string {
	if d.Driver == "" {
		return "unknown"
	}
	return d.Driver
}

// softDrivers names the drivers of software devices, which have no bus device in sysfs, by the
// prefix the kernel gives their names.
var softDrivers = []struct{ prefix, driver string }{{"rxe", "rdma_rxe"}, {"siw", "siw"}}

// readDriver finds the kernel driver of the device whose sysfs directory is base.
func readDriver(base string, d *Device) string {
	if l, err := os.Readlink(filepath.Join(base, "device", "driver")); err == nil {
		return filepath.Base(l)
	}
	for _, s := range softDrivers {
		if strings.HasPrefix(d.Name, s.prefix) {
			return s.driver
		}
	}
	if d.Parent != "" {
		return "rdma_rxe" // only rxe has the parent attribute
	}
	return ""
}

// Port describes one port of a Device.
type Port struct {
	Num       int
	State     string   // e.g. "ACTIVE", "DOWN" (the text after "N: " in sysfs)
	LinkLayer string   // "Ethernet" or "InfiniBand"
	GIDs      []net.IP // non-zero entries of the GID table (first maxGIDs slots)
	Netdevs   []string // netdevs behind those GIDs (RoCE), deduplicated
}

// maxGIDs bounds how many GID table slots Devices reads per port.
const maxGIDs = 16

// Devices lists the RDMA devices present. It returns ErrNoDevice (wrapped) when there is none.
func Devices() ([]Device, error) {
	classDir := filepath.Join(sysfsRoot, "class", "infiniband")
	ents, err := os.ReadDir(classDir)
	if err != nil || len(ents) == 0 {
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("rdma: list %s: %w", classDir, err)
		}
		return nil, fmt.Errorf("rdma: %s is empty or missing: %w", classDir, ErrNoDevice)
	}
	uverbs, err := uverbsByIBDev()
	if err != nil {
		return nil, err
	}
	var devs []Device
	for _, e := range ents {
		d, err := readDevice(classDir, e.Name(), uverbs)
		if err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	sort.Slice(devs, func(i, j int) bool { return devs[i].Name < devs[j].Name })
	return devs, nil
}

// DeviceByName returns the device called name.
func DeviceByName(name string) (Device, error) {
	return findDevice(func(d *Device) bool { return d.Name == name }, "name "+name)
}

// DeviceByGUID returns the device whose node GUID is guid (host order).
func DeviceByGUID(guid uint64) (Device, error) {
	return findDevice(func(d *Device) bool { return d.NodeGUID == guid }, fmt.Sprintf("node GUID %016x", guid))
}

// DeviceForNetdev returns the RDMA device that sits on the network interface netdev.
func DeviceForNetdev(netdev string) (Device, error) {
	name, err := rdmamap.GetRdmaDeviceForNetdevice(netdev)
	if err != nil {
		return Device{}, fmt.Errorf("rdma: no device on netdev %s: %w (%w)", netdev, ErrNoDevice, err)
	}
	return DeviceByName(name)
}

func findDevice(match func(*Device) bool, what string) (Device, error) {
	devs, err := Devices()
	if err != nil {
		return Device{}, err
	}
	for i := range devs {
		if match(&devs[i]) {
			return devs[i], nil
		}
	}
	return Device{}, fmt.Errorf("rdma: no device with %s: %w", what, ErrNoDevice)
}

// uverbsByIBDev maps device names to their uverbs character device via
// /sys/class/infiniband_verbs/uverbsN/ibdev.
func uverbsByIBDev() (map[string]string, error) {
	dir := filepath.Join(sysfsRoot, "class", "infiniband_verbs")
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("rdma: %s missing (ib_uverbs not loaded?): %w", dir, ErrNoDevice)
		}
		return nil, fmt.Errorf("rdma: list %s: %w", dir, err)
	}
	m := make(map[string]string)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "uverbs") {
			continue
		}
		ibdev, err := readTrim(filepath.Join(dir, e.Name(), "ibdev"))
		if err != nil {
			return nil, err
		}
		m[ibdev] = filepath.Join(devRoot, "infiniband", e.Name())
	}
	return m, nil
}

func readDevice(classDir, name string, uverbs map[string]string) (Device, error) {
	d := Device{Name: name, UverbsPath: uverbs[name]}
	if d.UverbsPath == "" {
		return d, fmt.Errorf("rdma: device %s has no uverbs character device: %w", name, ErrNoDevice)
	}
	base := filepath.Join(classDir, name)
	guid, err := readTrim(filepath.Join(base, "node_guid"))
	if err != nil {
		return d, err
	}
	if d.NodeGUID, err = ParseGUID(guid); err != nil {
		return d, fmt.Errorf("rdma: device %s: %w", name, err)
	}
	if p, err := readTrim(filepath.Join(base, "parent")); err == nil {
		d.Parent = p
	}
	d.Driver = readDriver(base, &d)
	ports, err := os.ReadDir(filepath.Join(base, "ports"))
	if err != nil {
		return d, fmt.Errorf("rdma: device %s ports: %w", name, err)
	}
	for _, pe := range ports {
		num, err := strconv.Atoi(pe.Name())
		if err != nil {
			continue
		}
		p, err := readPort(filepath.Join(base, "ports", pe.Name()), num)
		if err != nil {
			return d, fmt.Errorf("rdma: device %s: %w", name, err)
		}
		d.Ports = append(d.Ports, p)
	}
	sort.Slice(d.Ports, func(i, j int) bool { return d.Ports[i].Num < d.Ports[j].Num })
	return d, nil
}

func readPort(dir string, num int) (Port, error) {
	p := Port{Num: num}
	state, err := readTrim(filepath.Join(dir, "state"))
	if err != nil {
		return p, err
	}
	// sysfs prints "4: ACTIVE".
	if _, s, ok := strings.Cut(state, ": "); ok {
		state = s
	}
	p.State = state
	if ll, err := readTrim(filepath.Join(dir, "link_layer")); err == nil {
		p.LinkLayer = ll
	}
	seen := map[string]bool{}
	for i := 0; i < maxGIDs; i++ {
		g, err := readTrim(filepath.Join(dir, "gids", strconv.Itoa(i)))
		if err != nil {
			break
		}
		ip, err := parseGID(g)
		if err != nil {
			return p, fmt.Errorf("port %d gid %d: %w", num, i, err)
		}
		if ip.IsUnspecified() {
			continue
		}
		p.GIDs = append(p.GIDs, ip)
		if nd, err := readTrim(filepath.Join(dir, "gid_attrs", "ndevs", strconv.Itoa(i))); err == nil && !seen[nd] {
			seen[nd] = true
			p.Netdevs = append(p.Netdevs, nd)
		}
	}
	return p, nil
}

// ParseGUID parses a GUID in sysfs notation ("0002:c903:0001:2345") into host order.
func ParseGUID(s string) (uint64, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 4 {
		return 0, fmt.Errorf("rdma: bad GUID %q: want four groups of four hex digits", s)
	}
	var g uint64
	for _, p := range parts {
		if len(p) != 4 {
			return 0, fmt.Errorf("rdma: bad GUID %q: group %q is not four hex digits", s, p)
		}
		v, err := strconv.ParseUint(p, 16, 16)
		if err != nil {
			return 0, fmt.Errorf("rdma: bad GUID %q: %w", s, err)
		}
		g = g<<16 | v
	}
	return g, nil
}

// parseGID parses a GID in sysfs notation (eight groups of four hex digits).
func parseGID(s string) (net.IP, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 8 {
		return nil, fmt.Errorf("rdma: bad GID %q", s)
	}
	ip := make(net.IP, 16)
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 16, 16)
		if err != nil || len(p) != 4 {
			return nil, fmt.Errorf("rdma: bad GID %q", s)
		}
		ip[2*i], ip[2*i+1] = byte(v>>8), byte(v)
	}
	return ip, nil
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("rdma: read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// AddRxeLink creates a Soft-RoCE device called name on the network interface netdev
// (like `rdma link add NAME type rxe netdev NETDEV`). It needs CAP_NET_ADMIN and rdma_rxe.
func AddRxeLink(name, netdev string) error {
	if err := netlink.RdmaLinkAdd(name, "rxe", netdev); err != nil {
		return fmt.Errorf("rdma: add rxe link %s on %s: %w", name, netdev, err)
	}
	return nil
}

// DelLink deletes the RDMA link (e.g. an rxe device) called name.
func DelLink(name string) error {
	if err := netlink.RdmaLinkDel(name); err != nil {
		return fmt.Errorf("rdma: delete link %s: %w", name, err)
	}
	return nil
}

// DevicesForAddr returns the RDMA devices an rdma_cm listener on a can use: every device for a
// wildcard address, else the device on the network interface that holds a (found with netlink,
// then rdmamap, then the netdevs behind the devices' RoCE GIDs, which covers VLANs and bonds).
// The error, wrapping ErrNoDevice, names the interface and says why it has no device.
func DevicesForAddr(a netip.Addr) ([]Device, error) {
	a = a.Unmap()
	if a.IsUnspecified() {
		devs, err := Devices()
		if err != nil {
			return nil, err
		}
		return devs, nil
	}
	netdev, err := netdevOf(a)
	if err != nil {
		return nil, err
	}
	if d, err := DeviceForNetdev(netdev); err == nil {
		return []Device{d}, nil
	}
	devs, err := Devices()
	if err != nil && !errors.Is(err, ErrNoDevice) {
		return nil, err
	}
	for _, d := range devs {
		for _, p := range d.Ports {
			if slices.Contains(p.Netdevs, netdev) {
				return []Device{d}, nil
			}
		}
	}
	return nil, fmt.Errorf("rdma: network interface %s (address %v) has no RDMA device: load its NIC's RDMA driver, or for Soft-RoCE `rdma link add rxe0 type rxe netdev %s`: %w",
		netdev, a, netdev, ErrNoDevice)
}

// netdevOf returns the network interface that holds address a.
func netdevOf(a netip.Addr) (string, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return "", fmt.Errorf("rdma: list addresses: %w", err)
	}
	for _, x := range addrs {
		ip, ok := netip.AddrFromSlice(x.IP)
		if !ok || ip.Unmap() != a {
			continue
		}
		l, err := netlink.LinkByIndex(x.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("rdma: interface of %v: %w", a, err)
		}
		return l.Attrs().Name, nil
	}
	return "", fmt.Errorf("rdma: no network interface has address %v: %w", a, ErrNoDevice)
}
