package cluster

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/iserd/iserd/scsi"
)

// Key layout under /iserd/<cluster name>/.
const (
	// nodesDir holds each live node's record, attached to its lease: the
	// key exists exactly while the node is live.
	nodesDir = "nodes/"
	// membersDir holds each node's last record without a lease, so that a
	// node starting while another is down still knows that node's port
	// group (and reports it unavailable).
	membersDir = "members/"
	// aluaDir holds the states SET TARGET PORT GROUPS set cluster-wide:
	// alua/<target>/<group id> = state name.
	aluaDir = "alua/"
	// configKey holds the cluster-wide configuration (targets, LUNs, ACLs,
	// CHAP), an opaque document to this package.
	configKey = "config"
)

// Prefix is the etcd key prefix of cluster name.
func Prefix(name string) string { return "/iserd/" + name + "/" }

// Record is a node record: what the other nodes learn about a node.
type Record struct {
	Node    string   `json:"node"`
	Portals []Portal `json:"portals"`
}

// TPGTs are the distinct portal group tags of the record, ascending: the
// relative target port identifiers of the node's target ports.
func (r Record) TPGTs() []uint16 {
	var out []uint16
	for _, p := range r.Portals {
		out = append(out, p.TPGT)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Group is the ID of the node's ALUA target port group: its lowest TPGT
// (unique in the cluster, as every TPGT is), 0 when it has no portal.
func (r Record) Group() uint16 {
	if t := r.TPGTs(); len(t) > 0 {
		return t[0]
	}
	return 0
}

// decodeRecord parses a node record stored under key.
func decodeRecord(key string, b []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("node record %s: %w", key, err)
	}
	return r, nil
}

// view is what a node knows of the cluster: an immutable snapshot,
// replaced whole when etcd reports a change.
type view struct {
	members map[string]Record // every node ever seen, by name
	live    map[string]bool   // nodes whose lease-bound key exists
	// states are the explicit ALUA states: target -> group -> state.
	states map[string]map[uint16]scsi.ALUAState
	// config is the cluster-wide configuration and the revision that last
	// changed it (0: none stored).
	config    []byte
	configRev int64
}

func newView() *view {
	return &view{members: map[string]Record{}, live: map[string]bool{}, states: map[string]map[uint16]scsi.ALUAState{}}
}

// clone copies v for a change.
func (v *view) clone() *view {
	out := &view{members: maps.Clone(v.members), live: maps.Clone(v.live), states: maps.Clone(v.states),
		config: v.config, configRev: v.configRev}
	for t, m := range out.states {
		out.states[t] = maps.Clone(m)
	}
	return out
}

// apply records a key's new value (del: the key was deleted), written at
// revision rev, in v, which the caller owns. rel is the key without the
// cluster prefix. Keys of other parts of iserd (persistent reservations)
// are ignored.
func (v *view) apply(rel string, value []byte, rev int64, del bool) error {
	switch {
	case rel == configKey:
		v.config, v.configRev = value, rev
		if del {
			v.config, v.configRev = nil, 0
		}
	case strings.HasPrefix(rel, nodesDir):
		name := strings.TrimPrefix(rel, nodesDir)
		if del {
			delete(v.live, name)
			return nil
		}
		r, err := decodeRecord(rel, value)
		if err != nil {
			return err
		}
		v.live[name], v.members[name] = true, r
	case strings.HasPrefix(rel, membersDir):
		name := strings.TrimPrefix(rel, membersDir)
		if del {
			delete(v.members, name)
			return nil
		}
		r, err := decodeRecord(rel, value)
		if err != nil {
			return err
		}
		v.members[name] = r
	case strings.HasPrefix(rel, aluaDir):
		target, id, ok := strings.Cut(strings.TrimPrefix(rel, aluaDir), "/")
		gid, err := strconv.ParseUint(id, 10, 16)
		if !ok || err != nil {
			return fmt.Errorf("ALUA key %s: want alua/<target>/<group id>", rel)
		}
		if del {
			delete(v.states[target], uint16(gid))
			return nil
		}
		st, err := scsi.ParseALUAState(string(value))
		if err != nil {
			return fmt.Errorf("ALUA key %s: %w", rel, err)
		}
		if v.states[target] == nil {
			v.states[target] = map[uint16]scsi.ALUAState{}
		}
		v.states[target][uint16(gid)] = st
	}
	return nil
}

// aluaKey is the key of an explicit state of group id of target.
func aluaKey(target string, id uint16) string {
	return aluaDir + target + "/" + strconv.FormatUint(uint64(id), 10)
}
