package admin

// RDMAStatus is what GET /v1/rdma answers: the host's RDMA devices and how iserd drives them.
type RDMAStatus struct {
	// Provider is the configured choice (rdma.provider): auto, native or libibverbs.
	Provider string `json:"provider"`
	// Libibverbs is "loaded", "not needed (provider native)" or why it cannot be loaded.
	Libibverbs string       `json:"libibverbs"`
	Devices    []RDMADevice `json:"devices"`
	// Error says why the devices could not be listed (e.g. no RDMA device at all).
	Error string `json:"error,omitempty"`
}

// RDMADevice is one RDMA device.
type RDMADevice struct {
	Name     string     `json:"name"`
	Driver   string     `json:"driver"`
	NodeGUID string     `json:"node_guid"`
	Netdevs  []string   `json:"netdevs"`
	Ports    []RDMAPort `json:"ports"`
	// Provider is what iserd drives the device with ("rxe" for the native one, "libibverbs"),
	// ProviderError why it cannot.
	Provider      string `json:"provider,omitempty"`
	ProviderError string `json:"provider_error,omitempty"`
	// Open says whether an iSER portal holds the device open; QPs, CQs and MRs are what iserd
	// holds on it (one QP and CQ per iSER connection, the buffer pool's regions and each
	// connection's slots as MRs).
	Open bool `json:"open"`
	QPs  int  `json:"qps"`
	CQs  int  `json:"cqs"`
	MRs  int  `json:"mrs"`
}

// RDMAPort is one port of an RDMA device.
type RDMAPort struct {
	Num       int      `json:"num"`
	State     string   `json:"state"`
	LinkLayer string   `json:"link_layer"`
	GIDs      []string `json:"gids"`
}
