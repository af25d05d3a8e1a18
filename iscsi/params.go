package iscsi

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Params holds a session's and connection's negotiated parameters (RFC 7143
// section 13, RFC 7145 section 6). A zero Params is not usable:
// DefaultParams gives the values in force before negotiation.
type Params struct {
	HeaderDigest, DataDigest bool
	MaxConnections           uint32
	InitialR2T               bool
	ImmediateData            bool
	// MaxXmitDataSegmentLength is the initiator's MaxRecvDataSegmentLength:
	// the most data the target may put in one PDU.
	MaxXmitDataSegmentLength uint32
	// MaxRecvDataSegmentLength is the target's own declared value.
	MaxRecvDataSegmentLength uint32
	MaxBurstLength           uint32
	FirstBurstLength         uint32
	DefaultTime2Wait         uint32
	DefaultTime2Retain       uint32
	MaxOutstandingR2T        uint32
	DataPDUInOrder           bool
	DataSequenceInOrder      bool
	ErrorRecoveryLevel       uint32
	// RDMAExtensions and the keys after it matter only over iSER.
	RDMAExtensions                 bool
	TargetRecvDataSegmentLength    uint32
	InitiatorRecvDataSegmentLength uint32
	MaxOutstandingUnexpectedPDUs   uint32

	SessionType    string // "Normal" or "Discovery"
	InitiatorName  string
	InitiatorAlias string
	TargetName     string
}

// DefaultParams returns the RFC defaults, with the target's receive limit.
func DefaultParams() Params {
	return Params{
		MaxConnections: 1, InitialR2T: true, ImmediateData: true,
		MaxXmitDataSegmentLength: 8192, MaxRecvDataSegmentLength: 8192,
		MaxBurstLength: 262144, FirstBurstLength: 65536,
		DefaultTime2Wait: 2, DefaultTime2Retain: 20, MaxOutstandingR2T: 1,
		DataPDUInOrder: true, DataSequenceInOrder: true,
		TargetRecvDataSegmentLength: 8192, InitiatorRecvDataSegmentLength: 8192,
		SessionType: "Normal",
	}
}

// TargetLimits are the values the target offers or accepts at most.
type TargetLimits struct {
	MaxRecvDataSegmentLength uint32 // declared to the initiator
	MaxBurstLength           uint32
	FirstBurstLength         uint32
	MaxOutstandingR2T        uint32
	InitialR2T               bool // the target's preference (OR-negotiated)
	ImmediateData            bool // the target's preference (AND-negotiated)
	RDMA                     bool // the connection runs over iSER
}

// DefaultLimits are iserd's defaults: large bursts, unsolicited data welcome.
func DefaultLimits() TargetLimits {
	return TargetLimits{
		MaxRecvDataSegmentLength: 262144, MaxBurstLength: 16776192, FirstBurstLength: 16776192,
		MaxOutstandingR2T: 16, InitialR2T: false, ImmediateData: true,
	}
}

// LoginStatus is a login response Status-Class and Status-Detail pair.
type LoginStatus uint16

// Login statuses (RFC 7143 11.13.5).
const (
	LoginSuccess            LoginStatus = 0x0000
	LoginInitiatorError     LoginStatus = 0x0200
	LoginAuthFailure        LoginStatus = 0x0201
	LoginAuthzFailure       LoginStatus = 0x0202
	LoginNotFound           LoginStatus = 0x0203
	LoginTargetRemoved      LoginStatus = 0x0204
	LoginUnsupportedVersion LoginStatus = 0x0205
	LoginTooManyConnections LoginStatus = 0x0206
	LoginMissingParameter   LoginStatus = 0x0207
	LoginCantIncludeInSess  LoginStatus = 0x0208
	LoginSessionTypeUnsupp  LoginStatus = 0x0209
	LoginNoSuchSession      LoginStatus = 0x020a
	LoginInvalidDuringLogin LoginStatus = 0x020b
	LoginTargetError        LoginStatus = 0x0300
	LoginServiceUnavailable LoginStatus = 0x0301
	LoginOutOfResources     LoginStatus = 0x0302
)

// LoginError is a login failure with the status to send and a reason for logs.
type LoginError struct {
	Status LoginStatus
	Reason string
}

func (e *LoginError) Error() string {
	return fmt.Sprintf("login failed with status %04x: %s", uint16(e.Status), e.Reason)
}

func loginErr(s LoginStatus, format string, a ...any) *LoginError {
	return &LoginError{Status: s, Reason: fmt.Sprintf(format, a...)}
}

// Answers to keys that are not negotiated.
const (
	valNotUnderstood = "NotUnderstood"
	valIrrelevant    = "Irrelevant"
	valReject        = "Reject"
)

type keyKind uint8

const (
	kindBoolAnd keyKind = iota
	kindBoolOr
	kindNumMin
	kindNumMax
	kindNumDeclare // declarative number: the sender's own limit, we answer with ours
	kindDigest
	kindSkip // handled elsewhere (declarative names, security keys)
)

type keyDef struct {
	kind     keyKind
	lo, hi   uint32
	rdmaOnly bool // Irrelevant unless RDMAExtensions=Yes
	normal   bool // Irrelevant in a discovery session
	// field returns the Params field the key negotiates (a *bool or *uint32).
	field func(p *Params) any
	// ours is the target's value for the key.
	ours func(l *TargetLimits) any
}

const max24 = 1<<24 - 1

var keyDefs = map[string]keyDef{
	"HeaderDigest":   {kind: kindDigest, field: func(p *Params) any { return &p.HeaderDigest }},
	"DataDigest":     {kind: kindDigest, field: func(p *Params) any { return &p.DataDigest }},
	"MaxConnections": {kind: kindNumMin, lo: 1, hi: 65535, normal: true, field: func(p *Params) any { return &p.MaxConnections }, ours: func(*TargetLimits) any { return uint32(1) }},
	"InitialR2T":     {kind: kindBoolOr, normal: true, field: func(p *Params) any { return &p.InitialR2T }, ours: func(l *TargetLimits) any { return l.InitialR2T }},
	"ImmediateData":  {kind: kindBoolAnd, normal: true, field: func(p *Params) any { return &p.ImmediateData }, ours: func(l *TargetLimits) any { return l.ImmediateData }},
	"MaxRecvDataSegmentLength": {kind: kindNumDeclare, lo: 512, hi: max24,
		field: func(p *Params) any { return &p.MaxXmitDataSegmentLength }, ours: func(l *TargetLimits) any { return l.MaxRecvDataSegmentLength }},
	"MaxBurstLength":      {kind: kindNumMin, lo: 512, hi: max24, normal: true, field: func(p *Params) any { return &p.MaxBurstLength }, ours: func(l *TargetLimits) any { return l.MaxBurstLength }},
	"FirstBurstLength":    {kind: kindNumMin, lo: 512, hi: max24, normal: true, field: func(p *Params) any { return &p.FirstBurstLength }, ours: func(l *TargetLimits) any { return l.FirstBurstLength }},
	"DefaultTime2Wait":    {kind: kindNumMax, lo: 0, hi: 3600, field: func(p *Params) any { return &p.DefaultTime2Wait }, ours: func(*TargetLimits) any { return uint32(2) }},
	"DefaultTime2Retain":  {kind: kindNumMin, lo: 0, hi: 3600, field: func(p *Params) any { return &p.DefaultTime2Retain }, ours: func(*TargetLimits) any { return uint32(20) }},
	"MaxOutstandingR2T":   {kind: kindNumMin, lo: 1, hi: 65535, normal: true, field: func(p *Params) any { return &p.MaxOutstandingR2T }, ours: func(l *TargetLimits) any { return l.MaxOutstandingR2T }},
	"DataPDUInOrder":      {kind: kindBoolOr, normal: true, field: func(p *Params) any { return &p.DataPDUInOrder }, ours: func(*TargetLimits) any { return true }},
	"DataSequenceInOrder": {kind: kindBoolOr, normal: true, field: func(p *Params) any { return &p.DataSequenceInOrder }, ours: func(*TargetLimits) any { return true }},
	"ErrorRecoveryLevel":  {kind: kindNumMin, lo: 0, hi: 2, field: func(p *Params) any { return &p.ErrorRecoveryLevel }, ours: func(*TargetLimits) any { return uint32(0) }},
	"IFMarker":            {kind: kindBoolAnd, field: func(*Params) any { return new(bool) }, ours: func(*TargetLimits) any { return false }},
	"OFMarker":            {kind: kindBoolAnd, field: func(*Params) any { return new(bool) }, ours: func(*TargetLimits) any { return false }},
	"RDMAExtensions":      {kind: kindBoolAnd, field: func(p *Params) any { return &p.RDMAExtensions }, ours: func(l *TargetLimits) any { return l.RDMA }},
	"TargetRecvDataSegmentLength": {kind: kindNumMin, lo: 512, hi: max24, rdmaOnly: true,
		field: func(p *Params) any { return &p.TargetRecvDataSegmentLength }, ours: func(l *TargetLimits) any { return l.MaxRecvDataSegmentLength }},
	"InitiatorRecvDataSegmentLength": {kind: kindNumMin, lo: 512, hi: max24, rdmaOnly: true,
		field: func(p *Params) any { return &p.InitiatorRecvDataSegmentLength }, ours: func(*TargetLimits) any { return uint32(max24) }},
	"MaxOutstandingUnexpectedPDUs": {kind: kindNumMin, lo: 0, hi: 1<<32 - 1, rdmaOnly: true,
		field: func(p *Params) any { return &p.MaxOutstandingUnexpectedPDUs }, ours: func(*TargetLimits) any { return uint32(0) }},
	"iSCSIProtocolLevel": {kind: kindNumMin, lo: 0, hi: 31, field: func(*Params) any { return new(uint32) }, ours: func(*TargetLimits) any { return uint32(1) }},
	"TaskReporting":      {kind: kindSkip},
	"OFMarkInt":          {kind: kindSkip},
	"IFMarkInt":          {kind: kindSkip},
	"SendTargets":        {kind: kindSkip},
	"InitiatorName":      {kind: kindSkip},
	"InitiatorAlias":     {kind: kindSkip},
	"TargetName":         {kind: kindSkip},
	"SessionType":        {kind: kindSkip},
	"AuthMethod":         {kind: kindSkip},
	"CHAP_A":             {kind: kindSkip},
	"CHAP_I":             {kind: kindSkip},
	"CHAP_C":             {kind: kindSkip},
	"CHAP_N":             {kind: kindSkip},
	"CHAP_R":             {kind: kindSkip},
}

// targetOnlyKeys may only be sent by a target; an initiator sending one
// commits a protocol error.
var targetOnlyKeys = map[string]bool{"TargetAddress": true, "TargetPortalGroupTag": true, "TargetAlias": true}

// negotiator negotiates the operational keys of one login.
type negotiator struct {
	p         *Params
	limits    TargetLimits
	discovery bool
	done      map[string]bool // keys settled in this login: not renegotiated
}

func newNegotiator(p *Params, l TargetLimits) *negotiator {
	return &negotiator{p: p, limits: l, done: make(map[string]bool)}
}

// negotiate answers the operational keys of one request. Declarative
// identity keys and security keys are left to the caller, which sees them
// in kvs too.
func (n *negotiator) negotiate(kvs []KV) ([]KV, *LoginError) {
	var resp []KV
	// MaxBurstLength first: FirstBurstLength's answer must not exceed it.
	kvs = slices.Clone(kvs)
	slices.SortStableFunc(kvs, func(a, b KV) int {
		return boolInt(b.Key == "MaxBurstLength") - boolInt(a.Key == "MaxBurstLength")
	})
	for _, kv := range kvs {
		if targetOnlyKeys[kv.Key] {
			return nil, loginErr(LoginInitiatorError, "initiator sent the target-only key %s", kv.Key)
		}
		def, known := keyDefs[kv.Key]
		if !known {
			resp = append(resp, KV{kv.Key, valNotUnderstood})
			continue
		}
		switch kv.Key {
		case "TaskReporting":
			resp = append(resp, KV{kv.Key, "RFC3720"})
			continue
		case "OFMarkInt", "IFMarkInt", "SendTargets":
			resp = append(resp, KV{kv.Key, valIrrelevant})
			continue
		}
		if def.kind == kindSkip {
			continue
		}
		if n.done[kv.Key] && kv.Key != "MaxRecvDataSegmentLength" {
			return nil, loginErr(LoginInitiatorError, "key %s negotiated twice in one login", kv.Key)
		}
		n.done[kv.Key] = true
		if (def.normal && n.discovery) || (def.rdmaOnly && !n.limits.RDMA) {
			resp = append(resp, KV{kv.Key, valIrrelevant})
			continue
		}
		answer, err := n.one(kv, def)
		if err != nil {
			return nil, loginErr(LoginInitiatorError, "%s=%s: %v", kv.Key, truncate(kv.Value), err)
		}
		resp = append(resp, KV{kv.Key, answer})
	}
	return resp, nil
}

// one negotiates a single key and returns the answer to send.
func (n *negotiator) one(kv KV, def keyDef) (string, error) {
	switch def.kind {
	case kindDigest:
		for _, v := range strings.Split(kv.Value, ",") {
			switch v {
			case "CRC32C", "None":
				*def.field(n.p).(*bool) = v == "CRC32C"
				return v, nil
			}
		}
		return valReject, nil
	case kindBoolAnd, kindBoolOr:
		v, err := parseBool(kv.Value)
		if err != nil {
			return "", err
		}
		ours := def.ours(&n.limits).(bool)
		res := v && ours
		if def.kind == kindBoolOr {
			res = v || ours
		}
		*def.field(n.p).(*bool) = res
		return fmtBool(res), nil
	}
	v, err := parseNumber(kv.Value, def.lo, def.hi)
	if err != nil {
		return "", err
	}
	ours := def.ours(&n.limits).(uint32)
	field := def.field(n.p).(*uint32)
	switch def.kind {
	case kindNumDeclare:
		*field = v
		return strconv.FormatUint(uint64(ours), 10), nil
	case kindNumMax:
		*field = max(v, ours)
	default:
		*field = min(v, ours)
		if kv.Key == "FirstBurstLength" {
			*field = min(*field, n.p.MaxBurstLength)
		}
		if kv.Key == "MaxOutstandingUnexpectedPDUs" && v != 0 && ours == 0 {
			*field = v // 0 means "no limit" on our side
		}
	}
	return strconv.FormatUint(uint64(*field), 10), nil
}

// finish checks the negotiated values belong together and returns any
// declarations the target still owes the initiator.
func (n *negotiator) finish() ([]KV, *LoginError) {
	if n.p.FirstBurstLength > n.p.MaxBurstLength {
		if n.done["FirstBurstLength"] {
			return nil, loginErr(LoginInitiatorError, "FirstBurstLength %d was agreed above the MaxBurstLength %d negotiated later",
				n.p.FirstBurstLength, n.p.MaxBurstLength)
		}
		n.p.FirstBurstLength = n.p.MaxBurstLength // the default exceeds a small negotiated burst
	}
	var resp []KV
	if !n.done["MaxRecvDataSegmentLength"] {
		n.done["MaxRecvDataSegmentLength"] = true
		resp = append(resp, KV{"MaxRecvDataSegmentLength", strconv.FormatUint(uint64(n.limits.MaxRecvDataSegmentLength), 10)})
	}
	n.p.MaxRecvDataSegmentLength = n.limits.MaxRecvDataSegmentLength
	return resp, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

var errBadBool = errors.New(`value must be "Yes" or "No"`)

func parseBool(s string) (bool, error) {
	switch s {
	case "Yes":
		return true, nil
	case "No":
		return false, nil
	}
	return false, errBadBool
}

func fmtBool(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// parseNumber reads a decimal or 0x-prefixed hexadecimal number within [lo, hi].
func parseNumber(s string, lo, hi uint32) (uint32, error) {
	base := 10
	digits := s
	if strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X") {
		base, digits = 16, s[2:]
	}
	if digits == "" || digits[0] == '+' || digits[0] == '-' {
		return 0, fmt.Errorf("%q is not a number", truncate(s))
	}
	v, err := strconv.ParseUint(digits, base, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", truncate(s))
	}
	if v < uint64(lo) || v > uint64(hi) {
		return 0, fmt.Errorf("%d is outside %d..%d", v, lo, hi)
	}
	return uint32(v), nil
}
