//go:build linux

package rdma

import (
	"fmt"
	"sync"
)

// Provider is the device-specific half of the verbs: the driver data appended to CREATE_CQ and
// CREATE_QP, and the data path over the queues the kernel shares with user space. The rxe
// provider is registered by default; others (mlx5) register themselves with RegisterProvider.
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

func providerFor(dev *Device) (Provider, error) {
	providersMu.Lock()
	defer providersMu.Unlock()
	for _, p := range providers {
		if p.Match(dev) {
			return p, nil
		}
	}
	return nil, fmt.Errorf("rdma: no user-space provider for device %s (only rxe is supported)", dev.Name)
}
