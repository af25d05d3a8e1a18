package main

import (
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/iserd/iserd/admin"
	"github.com/iserd/iserd/iser"
	"github.com/iserd/iserd/rdma"
)

// checkRDMA logs, once at start, why libibverbs cannot be used when a device or the
// configuration needs it; iSER portals on those devices are then refused with the same reason
// and every other portal is served.
func checkRDMA(provider rdma.ProviderChoice, log *zap.Logger) {
	if provider == rdma.ProviderNative {
		return
	}
	devs, err := rdma.Devices()
	if err != nil {
		return // no RDMA device: iSER portals are refused with that reason
	}
	for _, d := range devs {
		if _, err := provider.ProviderFor(d); errors.Is(err, rdma.ErrNoLibibverbs) {
			log.Warn("RDMA: libibverbs cannot be loaded; iSER portals on the devices that need it are refused, TCP portals are served",
				zap.String("provider", provider.String()), zap.Error(rdma.LibibverbsStatus()))
			return
		}
	}
}

// rdmaStatus describes the RDMA devices for GET /v1/rdma.
func rdmaStatus(provider rdma.ProviderChoice) admin.RDMAStatus {
	st := admin.RDMAStatus{Provider: provider.String(), Libibverbs: "not needed (provider native)", Devices: []admin.RDMADevice{}}
	if provider != rdma.ProviderNative {
		st.Libibverbs = "loaded"
		if err := rdma.LibibverbsStatus(); err != nil {
			st.Libibverbs = err.Error()
		}
	}
	devs, err := rdma.Devices()
	if err != nil {
		st.Error = err.Error()
		return st
	}
	open := iser.OpenDevices()
	for _, d := range devs {
		out := admin.RDMADevice{Name: d.Name, Driver: d.Driver, NodeGUID: fmt.Sprintf("%016x", d.NodeGUID), Netdevs: []string{}}
		if d.Parent != "" {
			out.Netdevs = append(out.Netdevs, d.Parent)
		}
		for _, p := range d.Ports {
			port := admin.RDMAPort{Num: p.Num, State: p.State, LinkLayer: p.LinkLayer, GIDs: []string{}}
			for _, g := range p.GIDs {
				port.GIDs = append(port.GIDs, g.String())
			}
			for _, n := range p.Netdevs {
				if !slices.Contains(out.Netdevs, n) {
					out.Netdevs = append(out.Netdevs, n)
				}
			}
			out.Ports = append(out.Ports, port)
		}
		if out.Provider, err = provider.ProviderFor(d); err != nil {
			out.ProviderError = err.Error()
		}
		for _, o := range open {
			if o.Name == d.Name {
				out.Open, out.Provider = true, o.Provider
				out.QPs, out.CQs, out.MRs = out.QPs+o.QPs, out.CQs+o.CQs, out.MRs+o.MRs
			}
		}
		st.Devices = append(st.Devices, out)
	}
	return st
}
