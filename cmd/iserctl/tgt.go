package main

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/iserd/iserd/admin"
)

// tgtPortal is where tgtd listens unless its command line says otherwise.
const tgtPortal = "0.0.0.0:3260"

// tgtBlock is a <target>, <backing-store> or <direct-store> section of
// targets.conf: its options in order and the sections inside it.
type tgtBlock struct {
	kind, name string
	options    [][2]string // key, value
	blocks     []*tgtBlock
	where      string // file:line, for messages
}

// values returns every value of an option.
func (b *tgtBlock) values(key string) []string {
	var out []string
	for _, o := range b.options {
		if o[0] == key {
			out = append(out, o[1])
		}
	}
	return out
}

// value returns an option's last value.
func (b *tgtBlock) value(key string) string {
	v := b.values(key)
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// parseTGT reads targets.conf and the files it includes into one
// top-level block.
func parseTGT(path string, top *tgtBlock, depth int) error {
	if depth > 8 {
		return fmt.Errorf("import tgt %s: include nested too deep", path)
	}
	raw, err := readFile(path)
	if err != nil {
		return err
	}
	stack := []*tgtBlock{top}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if i := strings.Index(text, " #"); i >= 0 {
			text = strings.TrimSpace(text[:i])
		}
		if text == "" || text[0] == '#' {
			continue
		}
		where := fmt.Sprintf("%s:%d", path, line)
		cur := stack[len(stack)-1]
		switch {
		case strings.HasPrefix(text, "</"):
			kind := strings.TrimSuffix(strings.TrimPrefix(text, "</"), ">")
			if len(stack) == 1 || !strings.EqualFold(cur.kind, kind) {
				return fmt.Errorf("import tgt %s: %s closes nothing open", where, text)
			}
			stack = stack[:len(stack)-1]
		case text[0] == '<':
			kind, name, _ := strings.Cut(strings.TrimSuffix(text[1:], ">"), " ")
			b := &tgtBlock{kind: strings.ToLower(kind), name: strings.TrimSpace(name), where: where}
			cur.blocks = append(cur.blocks, b)
			stack = append(stack, b)
		default:
			key, value := splitOption(text)
			if key == "include" && len(stack) == 1 {
				if !filepath.IsAbs(value) {
					value = filepath.Join(filepath.Dir(path), value)
				}
				files, err := filepath.Glob(value)
				if err != nil {
					return fmt.Errorf("import tgt %s: include %s: %w", where, value, err)
				}
				for _, f := range files {
					if err := parseTGT(f, top, depth+1); err != nil {
						return err
					}
				}
				continue
			}
			cur.options = append(cur.options, [2]string{key, value})
		}
	}
	if len(stack) > 1 {
		return fmt.Errorf("import tgt %s: <%s %s> is not closed", path, stack[len(stack)-1].kind, stack[len(stack)-1].name)
	}
	return sc.Err()
}

// splitOption splits "key value" or "key = value".
func splitOption(text string) (string, string) {
	key, value, _ := strings.Cut(text, " ")
	if k, v, ok := strings.Cut(text, "="); ok && !strings.Contains(strings.TrimSpace(k), " ") {
		key, value = k, v
	}
	return strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
}

// readTGT reads targets.conf; portal is where tgtd listened.
func readTGT(path, portal string) (*migration, error) {
	top := &tgtBlock{}
	if err := parseTGT(path, top, 0); err != nil {
		return nil, err
	}
	m := &migration{}
	driver := top.value("default-driver")
	for _, o := range top.options {
		if o[0] != "default-driver" {
			m.leave("global option %s: not carried over", o[0])
		}
	}
	for _, b := range top.blocks {
		if b.kind != "target" {
			m.leave("%s: <%s> outside a target is not understood", b.where, b.kind)
			continue
		}
		m.cfg.Targets = append(m.cfg.Targets, m.tgtTarget(b, driver))
	}
	if len(m.cfg.Targets) > 0 {
		m.addPortal(portal, false, 0)
		if portal == tgtPortal {
			m.leave("portal: tgtd's address is on its command line, not in targets.conf; iserd gets %s (give another with --portal)", portal)
		}
	}
	return m, nil
}

// tgtLUNOptions apply to a LUN; set in a target they apply to all its LUNs.
var tgtLUNOptions = map[string]bool{"readonly": true, "block-size": true, "bs-type": true, "scsi_sn": true,
	"write-cache": true, "device-type": true, "lun": true, "allow-in-use": true}

// tgtTarget converts one <target> section.
func (m *migration) tgtTarget(b *tgtBlock, driver string) admin.TargetConfig {
	t := admin.TargetConfig{Name: b.name}
	if d := b.value("driver"); d != "" {
		driver = d
	}
	if driver == "iser" {
		m.leave("target %s: driver iser; iserd's iSER portal needs the RDMA device's address: add it with iserctl portal add ADDRESS --transport both", t.Name)
	} else if driver != "" && driver != "iscsi" {
		m.leave("target %s: driver %s is not iSCSI: not carried over", t.Name, driver)
	}
	defaults := map[string]string{}
	var stores []*tgtBlock // backing-store and direct-store, as blocks
	for _, o := range b.options {
		key, value := o[0], o[1]
		switch {
		case key == "backing-store" || key == "direct-store":
			stores = append(stores, &tgtBlock{kind: key, name: value, where: b.where})
		case key == "initiator-name":
			t.ACLs = append(t.ACLs, admin.ACLConfig{Initiator: value})
		case key == "initiator-address":
			if strings.EqualFold(value, "ALL") {
				t.Open = true
				continue
			}
			m.leave("target %s: initiator-address %s; iserd has no address ACLs (use initiator names, or a firewall)", t.Name, value)
		case key == "incominguser":
			user, secret := splitCredentials(value)
			if t.CHAP == nil {
				t.CHAP = &admin.CHAPConfig{User: user, Secret: secret}
			} else {
				m.leave("target %s: incominguser %s; iserd takes one CHAP user per target (or one per initiator ACL)", t.Name, user)
			}
		case key == "outgoinguser":
			user, secret := splitCredentials(value)
			if t.CHAP == nil {
				t.CHAP = &admin.CHAPConfig{}
			}
			t.CHAP.MutualUser, t.CHAP.MutualSecret = user, secret
		case key == "driver" || key == "controller_tid":
		case tgtLUNOptions[key]:
			defaults[key] = value
		default:
			m.leave("target %s: option %s %s: not carried over", t.Name, key, value)
		}
	}
	if !hasOption(b, "initiator-address") {
		// tgt-admin binds ALL when no initiator-address is given, and tgt admits an
		// initiator whose address or name is bound: initiator-name alone lets everyone in.
		if len(t.ACLs) == 0 {
			t.Open = true
		} else {
			m.leave("target %s: no initiator-address, so tgt-admin bound ALL and tgt let every initiator in; iserd admits only the initiator-name list (add the others, or set open: true)", t.Name)
		}
	}
	if t.CHAP != nil && t.CHAP.User == "" {
		m.leave("target %s: outgoinguser without incominguser; iserd's mutual CHAP needs the initiator's CHAP first: not carried over", t.Name)
		t.CHAP = nil
	}
	for _, s := range b.blocks {
		if s.kind == "backing-store" || s.kind == "direct-store" {
			stores = append(stores, s)
		} else {
			m.leave("%s: <%s> inside a target is not understood", s.where, s.kind)
		}
	}
	for _, s := range tgtNumbered(stores) {
		if l, ok := m.tgtLUN(t.Name, s.block, s.lun, defaults); ok {
			t.LUNs = append(t.LUNs, l)
		}
	}
	return t
}

func hasOption(b *tgtBlock, key string) bool { return len(b.values(key)) > 0 }

// splitCredentials splits "user secret".
func splitCredentials(v string) (string, string) {
	user, secret, _ := strings.Cut(v, " ")
	return user, strings.TrimSpace(secret)
}

// numberedStore is a store with the LUN tgt-admin gives it.
type numberedStore struct {
	block *tgtBlock
	lun   uint64
}

// tgtNumbered numbers stores as tgt-admin does: an explicit lun wins; the
// others take the lowest free LUN from 1 up (LUN 0 is tgt's controller),
// backing stores before direct stores, each in path order.
func tgtNumbered(stores []*tgtBlock) []numberedStore {
	sort.SliceStable(stores, func(i, j int) bool {
		if stores[i].kind != stores[j].kind {
			return stores[i].kind < stores[j].kind
		}
		return stores[i].name < stores[j].name
	})
	taken := map[uint64]bool{}
	for _, s := range stores {
		if n, err := strconv.ParseUint(s.value("lun"), 10, 64); err == nil {
			taken[n] = true
		}
	}
	out := make([]numberedStore, 0, len(stores))
	next := uint64(1)
	for _, s := range stores {
		n, err := strconv.ParseUint(s.value("lun"), 10, 64)
		if err != nil {
			for taken[next] {
				next++
			}
			n = next
			taken[n] = true
		}
		out = append(out, numberedStore{s, n})
	}
	return out
}

// tgtLUN converts one store; options in its block override the target's.
func (m *migration) tgtLUN(target string, s *tgtBlock, n uint64, defaults map[string]string) (admin.LUNConfig, bool) {
	opt := map[string]string{}
	for k, v := range defaults {
		opt[k] = v
	}
	for _, o := range s.options {
		if tgtLUNOptions[o[0]] {
			opt[o[0]] = o[1]
		} else {
			m.leave("target %s LUN %d (%s): option %s %s: not carried over", target, n, s.name, o[0], o[1])
		}
	}
	thin := false
	l := admin.LUNConfig{LUN: n, Path: s.name, Serial: opt["scsi_sn"], Thin: &thin}
	switch bs := opt["bs-type"]; bs {
	case "", "rdwr", "aio":
	default:
		m.leave("target %s LUN %d (%s): bs-type %s cannot be carried over (iserd serves files, block devices and memory)",
			target, n, s.name, bs)
		return l, false
	}
	if dt := opt["device-type"]; dt != "" && dt != "disk" {
		m.leave("target %s LUN %d (%s): device-type %s; iserd serves disks only", target, n, s.name, dt)
		return l, false
	}
	l.ReadOnly = opt["readonly"] == "1" || strings.EqualFold(opt["readonly"], "yes")
	if v := opt["block-size"]; v != "" {
		bs, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			m.leave("target %s LUN %d (%s): block-size %q is not a number", target, n, s.name, v)
		}
		l.BlockSize = uint32(bs)
	}
	if opt["write-cache"] == "off" {
		m.leave("target %s LUN %d (%s): write-cache off; iserd reports a write cache and honors FUA and SYNCHRONIZE CACHE",
			target, n, s.name)
	}
	if s.kind == "direct-store" {
		m.leave("target %s LUN %d (%s): direct-store passed the device's own inquiry data through; iserd serves the "+
			"device as a disk of its own (vendor, product and identifiers change)", target, n, s.name)
	}
	return l, true
}
