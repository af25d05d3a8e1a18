package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/iserd/iserd/admin"
)

// lioConfig is the part of targetcli's saveconfig.json (rtslib's dump)
// that iserd can use; other fields are ignored.
type lioConfig struct {
	FabricModules  []lioFabric        `json:"fabric_modules"`
	StorageObjects []lioStorageObject `json:"storage_objects"`
	Targets        []lioTarget        `json:"targets"`
}

type lioFabric struct {
	Name                  string `json:"name"`
	DiscoveryEnableAuth   bool   `json:"discovery_enable_auth"`
	DiscoveryUserID       string `json:"discovery_userid"`
	DiscoveryPassword     string `json:"discovery_password"`
	DiscoveryMutualUser   string `json:"discovery_mutual_userid"`
	DiscoveryMutualSecret string `json:"discovery_mutual_password"`
}

type lioStorageObject struct {
	Plugin     string         `json:"plugin"` // fileio, block, ramdisk, pscsi, user
	Name       string         `json:"name"`
	Dev        string         `json:"dev"`
	Size       int64          `json:"size"`
	WWN        string         `json:"wwn"`
	Readonly   bool           `json:"readonly"`
	WriteBack  *bool          `json:"write_back"`
	NullIO     bool           `json:"nullio"`
	Attributes map[string]any `json:"attributes"`
}

// path is how LUNs name the object: /backstores/PLUGIN/NAME (ramdisk
// objects are saved with plugin rd_mcp).
func (o lioStorageObject) path() string {
	plugin := o.Plugin
	if plugin == "rd_mcp" {
		plugin = "ramdisk"
	}
	return "/backstores/" + plugin + "/" + o.Name
}

// attr reads a numeric attribute (rtslib saves them as numbers).
func (o lioStorageObject) attr(name string) (int64, bool) {
	v, ok := o.Attributes[name].(float64)
	return int64(v), ok
}

type lioTarget struct {
	Fabric string   `json:"fabric"`
	WWN    string   `json:"wwn"`
	TPGs   []lioTPG `json:"tpgs"`
}

type lioCHAP struct {
	UserID       string `json:"chap_userid"`
	Password     string `json:"chap_password"`
	MutualUserID string `json:"chap_mutual_userid"`
	MutualPass   string `json:"chap_mutual_password"`
}

// config returns the credentials in iserd's form, or nil.
func (c lioCHAP) config() *admin.CHAPConfig {
	if c.UserID == "" {
		return nil
	}
	return &admin.CHAPConfig{User: c.UserID, Secret: c.Password, MutualUser: c.MutualUserID, MutualSecret: c.MutualPass}
}

type lioTPG struct {
	Tag        uint16         `json:"tag"`
	Enable     *bool          `json:"enable"`
	Attributes map[string]any `json:"attributes"`
	Parameters map[string]any `json:"parameters"`
	lioCHAP
	LUNs []struct {
		Index         uint64 `json:"index"`
		StorageObject string `json:"storage_object"`
	} `json:"luns"`
	Portals []struct {
		IPAddress string `json:"ip_address"`
		Port      int    `json:"port"`
		ISER      bool   `json:"iser"`
		Offload   bool   `json:"offload"`
	} `json:"portals"`
	NodeACLs []struct {
		NodeWWN string `json:"node_wwn"`
		// Attributes holds the ACL's own "authentication": -1 follows
		// the TPG, 0 and 1 override it for this initiator.
		Attributes map[string]any `json:"attributes"`
		lioCHAP
		MappedLUNs []struct {
			Index        uint64 `json:"index"`
			TPGLUN       uint64 `json:"tpg_lun"`
			WriteProtect bool   `json:"write_protect"`
		} `json:"mapped_luns"`
	} `json:"node_acls"`
}

// on reads a 0/1 TPG attribute.
func (t lioTPG) on(name string) bool {
	v, _ := t.Attributes[name].(float64)
	return v == 1
}

// aclAuth tells whether LIO asks the initiator of an ACL with these
// attributes for CHAP: the ACL's authentication attribute when it is 0 or
// 1, the TPG's (tpgAuth) when it is -1 (what targetcli leaves) or absent.
func aclAuth(attributes map[string]any, tpgAuth bool) bool {
	if v, ok := attributes["authentication"].(float64); ok && v >= 0 {
		return v == 1
	}
	return tpgAuth
}

// readLIO reads a saveconfig.json.
func readLIO(path string) (*migration, error) {
	raw, err := readFile(path)
	if err != nil {
		return nil, err
	}
	var lc lioConfig
	if err := json.Unmarshal(raw, &lc); err != nil {
		return nil, fmt.Errorf("import lio %s: not a targetcli saveconfig.json: %w", path, err)
	}
	m := &migration{}
	objects := map[string]lioStorageObject{}
	for _, o := range lc.StorageObjects {
		objects[o.path()] = o
	}
	for _, f := range lc.FabricModules {
		if f.Name == "iscsi" && f.DiscoveryEnableAuth && f.DiscoveryUserID != "" {
			m.cfg.DiscoveryCHAP = &admin.CHAPConfig{User: f.DiscoveryUserID, Secret: f.DiscoveryPassword,
				MutualUser: f.DiscoveryMutualUser, MutualSecret: f.DiscoveryMutualSecret}
		}
	}
	used := map[string]bool{}
	for _, t := range lc.Targets {
		if t.Fabric != "iscsi" {
			m.leave("%s target %s: only iSCSI targets are carried over", t.Fabric, t.WWN)
			continue
		}
		if len(t.TPGs) == 0 {
			m.leave("target %s has no TPG: nothing to serve", t.WWN)
			continue
		}
		for _, tpg := range t.TPGs[1:] {
			m.leave("target %s TPG %d: iserd serves one set of LUNs and ACLs per target; only TPG %d is carried over",
				t.WWN, tpg.Tag, t.TPGs[0].Tag)
		}
		m.cfg.Targets = append(m.cfg.Targets, m.lioTarget(t.WWN, t.TPGs[0], objects, used))
	}
	for _, o := range lc.StorageObjects {
		if !used[o.path()] {
			m.leave("backstore %s is not a LUN of any iSCSI target", o.path())
		}
	}
	if slices.ContainsFunc(m.cfg.Targets, func(t admin.TargetConfig) bool { return len(t.LUNs) > 0 }) {
		m.leave("LUN identity: the unit serial numbers (LIO's backstore WWNs) are carried over, but the vendor, product " +
			"and NAA designators are iserd's, so /dev/disk/by-id/wwn-* links and multipath WWIDs on the initiators change")
	}
	return m, nil
}

// lioTarget converts a target's TPG.
func (m *migration) lioTarget(name string, tpg lioTPG, objects map[string]lioStorageObject, used map[string]bool) admin.TargetConfig {
	t := admin.TargetConfig{Name: name}
	if tpg.Enable != nil && !*tpg.Enable {
		m.leave("target %s TPG %d is disabled in LIO; iserd serves it", name, tpg.Tag)
	}
	for _, p := range tpg.Portals {
		if p.Offload {
			m.leave("target %s portal %s:%d: hardware offload (cxgbit) is not supported; served in software", name, p.IPAddress, p.Port)
		}
		host := strings.Trim(p.IPAddress, "[]")
		m.addPortal(net.JoinHostPort(host, strconv.Itoa(p.Port)), p.ISER, tpg.Tag)
	}
	for _, l := range tpg.LUNs {
		o, ok := objects[l.StorageObject]
		if !ok {
			m.leave("target %s LUN %d: backstore %s is not in the file", name, l.Index, l.StorageObject)
			continue
		}
		used[l.StorageObject] = true
		if lc, ok := m.lioLUN(name, l.Index, o); ok {
			t.LUNs = append(t.LUNs, lc)
		}
	}
	auth := tpg.on("authentication")
	if tpg.on("generate_node_acls") {
		t.Open = true
		if tpg.on("demo_mode_write_protect") {
			m.leave("target %s: LIO's demo mode is write-protected; iserd's open mode is not (add ACLs with read_only instead)", name)
		}
	}
	if c := tpg.lioCHAP.config(); c != nil {
		if auth {
			t.CHAP = c
		} else {
			m.leave("target %s: TPG CHAP user %s is set but authentication=0, so LIO did not ask for it: not carried over", name, c.User)
		}
	}
	for _, acl := range tpg.NodeACLs {
		ac := admin.ACLConfig{Initiator: acl.NodeWWN, LUNs: map[uint64]uint64{}}
		protected := 0
		for _, ml := range acl.MappedLUNs {
			ac.LUNs[ml.Index] = ml.TPGLUN
			if ml.WriteProtect {
				protected++
			}
		}
		switch {
		case protected == 0:
		case protected == len(acl.MappedLUNs):
			ac.ReadOnly = true
		default:
			ac.ReadOnly = true
			m.leave("target %s ACL %s: %d of %d mapped LUNs are write-protected; iserd protects per ACL, so all of them are read-only",
				name, acl.NodeWWN, protected, len(acl.MappedLUNs))
		}
		if len(acl.MappedLUNs) == 0 {
			m.leave("target %s ACL %s maps no LUN; iserd shows it every LUN of the target", name, acl.NodeWWN)
			ac.LUNs = nil
		}
		auth := aclAuth(acl.Attributes, auth)
		if c := acl.lioCHAP.config(); c != nil {
			if auth {
				ac.CHAP = c
			} else {
				m.leave("target %s ACL %s: CHAP user %s is set but authentication=0, so LIO did not ask for it: not carried over",
					name, acl.NodeWWN, c.User)
			}
		} else if auth && t.CHAP == nil {
			m.leave("target %s ACL %s: authentication=1 without credentials; iserd lets it in without CHAP", name, acl.NodeWWN)
		}
		t.ACLs = append(t.ACLs, ac)
	}
	// saveconfig.json lists LUNs in configfs order, not by number
	slices.SortFunc(t.LUNs, func(a, b admin.LUNConfig) int { return cmp.Compare(a.LUN, b.LUN) })
	return t
}

// lioLUN converts a backstore.
func (m *migration) lioLUN(target string, n uint64, o lioStorageObject) (admin.LUNConfig, bool) {
	l := admin.LUNConfig{LUN: n, Serial: o.WWN}
	switch o.Plugin {
	case "fileio":
		l.Path, l.Size = o.Dev, admin.Size(o.Size)
		if o.WriteBack != nil && !*o.WriteBack {
			m.leave("target %s LUN %d (%s): write-through (write_back=false); iserd writes through the page cache "+
				"and makes writes stable on FUA and SYNCHRONIZE CACHE", target, n, o.path())
		}
	case "block":
		l.Path, l.ReadOnly = o.Dev, o.Readonly
	case "rd_mcp", "ramdisk":
		l.Backend, l.Size = "memory", admin.Size(o.Size)
		if o.NullIO {
			m.leave("target %s LUN %d (%s): nullio discards data; iserd's memory LUN keeps it", target, n, o.path())
		}
	default:
		m.leave("target %s LUN %d: %s backstore %s cannot be carried over (iserd serves files, block devices and memory)",
			target, n, o.Plugin, o.path())
		return l, false
	}
	if bs, ok := o.attr("block_size"); ok {
		l.BlockSize = uint32(bs)
	}
	thin := false
	if tpu, ok := o.attr("emulate_tpu"); ok {
		thin = tpu == 1
	}
	l.Thin = &thin
	if v, ok := o.attr("emulate_write_cache"); ok && v == 0 && o.Plugin == "block" {
		m.leave("target %s LUN %d (%s): LIO reported no write cache; iserd reports one and honors FUA and SYNCHRONIZE CACHE",
			target, n, o.path())
	}
	return l, true
}
