package iscsi

import (
	"fmt"
	"sort"
)

// CHAPSecret holds CHAP credentials (RFC 7143 12.1.3). User and Secret
// authenticate the initiator to the target; MutualUser and MutualSecret,
// when set, authenticate the target to the initiator as well.
type CHAPSecret struct {
	User         string
	Secret       string
	MutualUser   string
	MutualSecret string
}

// Check rejects credentials that CHAP cannot use safely.
func (c *CHAPSecret) Check() error {
	if c.User == "" || c.Secret == "" {
		return fmt.Errorf("CHAP needs both a user and a secret")
	}
	if len(c.Secret) < 12 || len(c.Secret) > 255 {
		return fmt.Errorf("CHAP secret must be 12 to 255 characters (initiators refuse shorter ones)")
	}
	if (c.MutualUser == "") != (c.MutualSecret == "") {
		return fmt.Errorf("mutual CHAP needs both mutual_user and mutual_secret")
	}
	for _, u := range []string{c.User, c.MutualUser} {
		if err := ValidTextValue(u); err != nil {
			return fmt.Errorf("CHAP user name: %w", err)
		}
	}
	if c.MutualSecret != "" && (len(c.MutualSecret) < 12 || len(c.MutualSecret) > 255) {
		return fmt.Errorf("mutual CHAP secret must be 12 to 255 characters")
	}
	if c.MutualSecret != "" && c.MutualSecret == c.Secret {
		return fmt.Errorf("the mutual CHAP secret must differ from the initiator's secret")
	}
	return nil
}

// ACL grants one initiator access to a target.
type ACL struct {
	// Initiator is the initiator's iSCSI name.
	Initiator string
	// LUNs maps the LUN numbers this initiator sees to the target's LUNs;
	// nil exposes every LUN under its own number.
	LUNs map[uint64]uint64
	// ReadOnly refuses writes from this initiator.
	ReadOnly bool
	// CHAP, when set, overrides the target's credentials for this initiator.
	CHAP *CHAPSecret
}

// Access is a target's access policy. It is replaced whole, never changed
// in place, so logins read it without locks.
type Access struct {
	// Open lets any initiator in (demo mode); ACLs still apply to those
	// listed.
	Open bool
	// CHAP, when set, is required from every initiator without its own.
	CHAP *CHAPSecret
	// ACLs by initiator name.
	ACLs map[string]*ACL
}

// lookup returns the ACL for an initiator: its own, or an open default.
func (a *Access) lookup(initiator string) (*ACL, bool) {
	if a == nil {
		return &ACL{Initiator: initiator}, true
	}
	if acl, ok := a.ACLs[initiator]; ok {
		return acl, true
	}
	if a.Open {
		return &ACL{Initiator: initiator}, true
	}
	return nil, false
}

// credentials returns the CHAP secret an initiator must prove, or nil.
func (a *Access) credentials(acl *ACL) *CHAPSecret {
	if acl != nil && acl.CHAP != nil {
		return acl.CHAP
	}
	if a == nil {
		return nil
	}
	return a.CHAP
}

// lunView translates between the LUNs an initiator sees and the target's.
type lunView struct {
	toTarget map[uint64]uint64
}

func newLUNView(acl *ACL) *lunView {
	if acl == nil || acl.LUNs == nil {
		return nil
	}
	return &lunView{toTarget: acl.LUNs}
}

// target returns the target LUN for an initiator LUN; ok is false when the
// initiator may not see it.
func (v *lunView) target(lun uint64) (uint64, bool) {
	if v == nil {
		return lun, true
	}
	t, ok := v.toTarget[lun]
	return t, ok
}

// visible lists the initiator's LUN numbers in order.
func (v *lunView) visible() []uint64 {
	out := make([]uint64, 0, len(v.toTarget))
	for l := range v.toTarget {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// initiatorLUN maps a target LUN back to the initiator's number.
func (v *lunView) initiatorLUN(lun uint64) (uint64, bool) {
	if v == nil {
		return lun, true
	}
	for l, t := range v.toTarget {
		if t == lun {
			return l, true
		}
	}
	return 0, false
}
