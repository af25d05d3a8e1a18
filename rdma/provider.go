//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"sync"
)

// Provider is a native provider: the device-specific half of the verbs spoken over the kernel
// ABI (the driver data appended to CREATE_CQ and CREATE_QP, and the data path over the queues the
// kernel shares with user space). The rxe provider is registered by default; others register
// themselves with RegisterProvider. Devices without a native provider are driven through
// libibverbs (see ProviderChoice).
type Provider interface {
	// Name identifies the provider in errors ("rxe").
	Name() string
	// Match reports whether the provider drives dev.
	Match(dev *Device) bool
	// CQDriverData returns the driver input appended to CREATE_CQ and the size of the driver
	// response that follows the core response.
	CQDriverData() (in []byte, outLen int)
	// NewCQRing builds the user-space view of a CQ from the driver response of CREATE_CQ.
	NewCQRing(c *Context, driverOut []byte) (CQRing, error)
	// QPDriverData is CQDriverData for CREATE_QP.
	QPDriverData() (in []byte, outLen int)
	// NewQPRings builds the user-space send and receive queues of qp from the driver
	// response of CREATE_QP.
	NewQPRings(c *Context, qp *QP, driverOut []byte) (QPRings, error)
}

// CQRing polls one completion queue. Calls are serialized by the CQ.
type CQRing interface {
	// Poll moves up to len(wc) completions into wc and returns how many it moved.
	Poll(wc []WorkCompletion) int
	// Close releases the ring's mappings (after DESTROY_CQ).
	Close() error
}

// QPRings posts work requests to one queue pair. PostSend calls are serialized by the QP, as
// are PostRecv calls; the two may run concurrently.
type QPRings interface {
	// PostSend queues wrs in order and rings the doorbell once. On error, the returned count
	// says how many were queued.
	PostSend(wrs []SendWR) (int, error)
	// PostRecv queues receive requests; it returns how many were queued.
	PostRecv(wrs []RecvWR) (int, error)
	// Close releases the rings' mappings (after DESTROY_QP).
	Close() error
}

var (
	providersMu sync.Mutex
	providers   = []Provider{rxeProvider{}}
)

// RegisterProvider adds a provider; later registrations are tried first.
func RegisterProvider(p Provider) {
	providersMu.Lock()
	defer providersMu.Unlock()
	providers = append([]Provider{p}, providers...)
}

// nativeFor returns the native provider that drives dev, or nil.
func nativeFor(dev *Device) Provider {
	providersMu.Lock()
	defer providersMu.Unlock()
	for _, p := range providers {
		if p.Match(dev) {
			return p
		}
	}
	return nil
}

// ProviderChoice says how devices are driven: ProviderAuto, ProviderNative or ProviderLibibverbs.
type ProviderChoice string

// Provider choices.
const (
	// ProviderAuto drives a device with a native provider where rdma has one for its driver (rxe),
	// else through libibverbs.
	ProviderAuto ProviderChoice = "auto"
	// ProviderNative drives devices with a native provider only (kernel ABI, no library).
	ProviderNative ProviderChoice = "native"
	// ProviderLibibverbs drives every device through libibverbs.so.1 and rdma-core's providers.
	ProviderLibibverbs ProviderChoice = "libibverbs"
)

// String returns the choice as the configuration spells it ("" reads as auto).
func (p ProviderChoice) String() string {
	if p == "" {
		return string(ProviderAuto)
	}
	return string(p)
}

// ParseProviderChoice parses auto, native or libibverbs ("" is auto).
func ParseProviderChoice(s string) (ProviderChoice, error) {
	switch p := ProviderChoice(s); p {
	case "", ProviderAuto:
		return ProviderAuto, nil
	case ProviderNative, ProviderLibibverbs:
		return p, nil
	}
	return "", fmt.Errorf("rdma: provider %q is not auto, native or libibverbs", s)
}

// ErrNoProvider is wrapped in the error for a device that the chosen provider cannot drive.
var ErrNoProvider = errors.New("rdma: no provider for the device")

// resolve picks the provider for dev: the native one, or nil for libibverbs (once the library
// is known to load and to list dev).
func (p ProviderChoice) resolve(dev *Device) (Provider, error) {
	native := nativeFor(dev)
	switch p {
	case ProviderNative:
		if native == nil {
			return nil, fmt.Errorf("rdma: device %s (driver %s) has no native provider (native drives rxe only; use provider libibverbs or auto): %w",
				dev.Name, dev.driverName(), ErrNoProvider)
		}
		return native, nil
	case "", ProviderAuto:
		if native != nil {
			return native, nil
		}
	case ProviderLibibverbs:
	default:
		return nil, fmt.Errorf("rdma: provider %q is not auto, native or libibverbs", string(p))
	}
	ok, err := libibverbsHas(dev.Name)
	if err != nil {
		return nil, fmt.Errorf("rdma: device %s (driver %s) needs libibverbs: %w: %w", dev.Name, dev.driverName(), err, ErrNoProvider)
	}
	if !ok {
		return nil, fmt.Errorf("rdma: libibverbs has no user-space provider for device %s (driver %s): %s: %w",
			dev.Name, dev.driverName(), libibverbsPackages, ErrNoProvider)
	}
	return nil, nil
}

// ProviderFor names the provider choice picks for dev ("rxe", "libibverbs"), or says why none
// can drive it (an error wrapping ErrNoProvider that names the device, its driver and what to
// install). It opens nothing.
func (p ProviderChoice) ProviderFor(dev Device) (string, error) {
	prov, err := p.resolve(&dev)
	if err != nil {
		return "", err
	}
	if prov == nil {
		return ProviderLibibverbs.String(), nil
	}
	return prov.Name(), nil
}
