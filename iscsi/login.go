package iscsi

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/iserd/iserd/scsi"
)

// maxLoginData is the most data one Login Request or Response may carry:
// MaxRecvDataSegmentLength is 8192 in both directions until the login ends
// (RFC 7143 13.12). A request announcing more is refused before any of it
// is read.
const maxLoginData = 8192

// Login stages (CSG/NSG values).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// loginState is the progress of one connection's login phase.
type loginState struct {
	first    bool
	isid     [6]byte
	itt      uint32
	cmdSN    uint32
	csg      int
	neg      *negotiator
	target   *Target
	acl      *ACL
	creds    *CHAPSecret // CHAP the initiator must pass, nil for none
	chap     *chapState  // the CHAP exchange once AuthMethod=CHAP
	authDone bool        // authentication finished (or AuthMethod=None)
	pending  []byte
}

// login runs the login phase. On success the connection has a session and
// is in full feature phase.
func (c *conn) login() error {
	st := &loginState{first: true}
	limits := c.srv.opts.Limits
	if c.mover != nil {
		// Over iSER, write data beyond the immediate data is fetched by RDMA
		// READ. Unsolicited Data-Out PDUs would each take one of the
		// connection's receive buffers: 32 writes of 1 MiB outran them, the
		// initiator's RNR retries ran out and its queue pair went to error
		// (seen in the VM with Linux ib_iser). InitialR2T=Yes stops them.
		limits.RDMA, limits.InitialR2T = true, true
	}
	st.neg = newNegotiator(&c.params, limits)
	var h Header
	for {
		if err := c.tr.ReadHeader(&h); err != nil {
			return fmt.Errorf("read login request: %w", err)
		}
		if h.Opcode() != OpLoginReq {
			if st.first { // not an iSCSI initiator: close without reading on
				return fmt.Errorf("first PDU is a %v, not a Login Request", h.Opcode())
			}
			return c.loginFail(&h, loginErr(LoginInvalidDuringLogin, "%v during login", h.Opcode()))
		}
		if h.DataLen() > maxLoginData {
			return c.loginFail(&h, loginErr(LoginInitiatorError,
				"Login Request announces a %d-byte data segment; at most %d bytes are allowed during login", h.DataLen(), maxLoginData))
		}
		data := make([]byte, h.DataLen())
		ok, err := c.tr.ReadData(data, len(data))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("data digest error during login") // digests are not active yet
		}
		done, lerr := c.loginStep(st, &h, data)
		if lerr != nil {
			return c.loginFail(&h, lerr)
		}
		if done {
			return nil
		}
	}
}

// loginFail answers with a failure status; the connection then closes.
func (c *conn) loginFail(h *Header, e *LoginError) error {
	// c.log names the initiator and target once login has read them.
	c.log.Warn("login refused", zap.String("status", fmt.Sprintf("%04x", uint16(e.Status))), zap.String("reason", e.Reason))
	var b BHS
	b[0] = byte(OpLoginResp)
	copy(b[8:14], h.BHS[8:14]) // ISID
	b.SetU32(offITT, h.ITT())
	b.SetU32(offCmdSN, c.statSN)
	b.SetU32(offExpStatSN, h.U32(offCmdSN))
	b.SetU32(offMaxCmdSN, h.U32(offCmdSN))
	b[36], b[37] = byte(e.Status>>8), byte(e.Status)
	c.tr.Queue(&b, nil)
	if c.tr.Flush() == nil {
		// Let the initiator close first: it tears its connection down on
		// the status, and closing under it races with that teardown (a
		// Linux 6.1 iscsi_tcp crash was seen that way).
		if hc, ok := c.tr.(interface{ CloseWrite() error }); ok {
			hc.CloseWrite()
		}
		c.discardUntilClosed()
	}
	return e
}

// loginStep handles one Login Request. done is true when the connection
// has entered full feature phase.
func (c *conn) loginStep(st *loginState, h *Header, data []byte) (done bool, _ *LoginError) {
	flags := h.Flags()
	transit, cont := flags&0x80 != 0, flags&0x40 != 0
	csg, nsg := int(flags>>2&3), int(flags&3)
	if st.first {
		if vmin := h.BHS[3]; vmin > 0 {
			return false, loginErr(LoginUnsupportedVersion, "initiator needs iSCSI version %d or later; the target speaks version 0", vmin)
		}
		copy(st.isid[:], h.BHS[8:14])
		st.itt = h.ITT()
		st.cmdSN = h.U32(offCmdSN)
		c.cid = h.U16(20)
		c.statSN = h.U32(offExpStatSN)
		if h.U16(14) != 0 {
			return false, loginErr(LoginTooManyConnections, "adding a connection to session %d: MaxConnections is 1", h.U16(14))
		}
		st.csg = csg
	}
	switch {
	case transit && cont:
		return false, loginErr(LoginInitiatorError, "T and C bits both set")
	case csg == 2 || csg != st.csg:
		return false, loginErr(LoginInitiatorError, "current stage %d where %d was expected", csg, st.csg)
	case transit && (nsg == 2 || nsg <= csg):
		return false, loginErr(LoginInitiatorError, "cannot move from stage %d to stage %d", csg, nsg)
	case h.ITT() != st.itt && !st.first:
		return false, loginErr(LoginInitiatorError, "initiator task tag changed during login")
	}
	if len(st.pending)+len(data) > maxTextLen {
		return false, loginErr(LoginInitiatorError, "login text longer than %d bytes", maxTextLen)
	}
	st.pending = append(st.pending, data...)
	if cont { // more text follows: acknowledge with an empty response
		return false, c.loginRespond(st, h, false, 0, nil, 0)
	}
	kvs, err := ParseText(st.pending)
	st.pending = st.pending[:0]
	if err != nil {
		return false, loginErr(LoginInitiatorError, "malformed login text: %v", err)
	}
	var resp []KV
	if st.first {
		r, lerr := c.loginIdentify(st, kvs)
		if lerr != nil {
			return false, lerr
		}
		resp = append(resp, r...)
		st.first = false
	}
	r, lerr := c.authenticate(st, csg, kvs)
	if lerr != nil {
		return false, lerr
	}
	resp = append(resp, r...)
	if transit && csg == stageSecurity && !st.authDone {
		if st.chap == nil {
			return false, loginErr(LoginAuthFailure, "leaving the security stage before authenticating")
		}
		transit = false // CHAP is still going: stay in the security stage
	}
	r, lerr = st.neg.negotiate(kvs)
	if lerr != nil {
		return false, lerr
	}
	resp = append(resp, r...)
	if !transit {
		return false, c.loginRespond(st, h, false, 0, resp, 0)
	}
	if nsg == stageFullFeature || csg == stageOperational {
		r, lerr := st.neg.finish()
		if lerr != nil {
			return false, lerr
		}
		resp = append(resp, r...)
	}
	if nsg != stageFullFeature {
		if lerr := c.loginRespond(st, h, true, nsg, resp, 0); lerr != nil { // the response names the stage being left
			return false, lerr
		}
		st.csg = nsg
		return false, nil
	}
	if textLen(resp) > maxLoginData { // refused before a session exists
		return false, loginErr(LoginInitiatorError, "the answer to this Login Request would be longer than %d bytes", maxLoginData)
	}
	tsih, lerr := c.startSession(st)
	if lerr != nil {
		return false, lerr
	}
	c.loginRespond(st, h, true, nsg, resp, tsih)
	if err := c.tr.Flush(); err != nil {
		return false, loginErr(LoginTargetError, "send final login response: %v", err)
	}
	if c.mover != nil {
		if c.params.RDMAExtensions {
			c.params.MaxXmitDataSegmentLength = c.params.InitiatorRecvDataSegmentLength
		}
		if err := c.mover.FullFeature(&c.params); err != nil {
			return false, loginErr(LoginTargetError, "enter full feature phase: %v", err)
		}
		return true, nil
	}
	c.tr.SetDigests(c.params.HeaderDigest, c.params.DataDigest)
	return true, nil
}

// loginIdentify checks the identity keys of the first Login Request.
func (c *conn) loginIdentify(st *loginState, kvs []KV) ([]KV, *LoginError) {
	p := &c.params
	for _, kv := range kvs {
		switch kv.Key {
		case "InitiatorName":
			p.InitiatorName = kv.Value
		case "InitiatorAlias":
			p.InitiatorAlias = kv.Value
		case "TargetName":
			p.TargetName = kv.Value
		case "SessionType":
			if kv.Value != "Normal" && kv.Value != "Discovery" {
				return nil, loginErr(LoginSessionTypeUnsupp, "SessionType=%s is neither Normal nor Discovery", truncate(kv.Value))
			}
			p.SessionType = kv.Value
		}
	}
	if p.InitiatorName == "" {
		return nil, loginErr(LoginMissingParameter, "InitiatorName missing from the first Login Request")
	}
	if err := ValidName(p.InitiatorName); err != nil {
		return nil, loginErr(LoginInitiatorError, "InitiatorName: %v", err)
	}
	c.log = c.log.With(zap.String("initiator", p.InitiatorName))
	if p.SessionType == "Discovery" {
		st.neg.discovery = true
		st.creds = c.srv.discoveryCHAP.Load()
		return nil, nil
	}
	if p.TargetName == "" {
		return nil, loginErr(LoginMissingParameter, "TargetName missing from a normal session's first Login Request")
	}
	st.target = c.srv.target(p.TargetName)
	if st.target == nil {
		return nil, loginErr(LoginNotFound, "no target named %s", truncate(p.TargetName))
	}
	c.log = c.log.With(zap.String("target", p.TargetName))
	access := st.target.Access()
	acl, ok := access.lookup(p.InitiatorName)
	if !ok {
		return nil, loginErr(LoginAuthzFailure, "initiator %s is not in the ACL of %s", p.InitiatorName, p.TargetName)
	}
	st.acl, st.creds = acl, access.credentials(acl)
	c.tpgt = c.srv.tpgt(c.tr.LocalAddr())
	resp := []KV{{"TargetPortalGroupTag", fmt.Sprint(c.tpgt)}}
	if st.target.Alias != "" {
		resp = append(resp, KV{"TargetAlias", st.target.Alias})
	}
	return resp, nil
}

// startSession creates (or reinstates) the session at the end of login.
func (c *conn) startSession(st *loginState) (uint16, *LoginError) {
	if !st.authDone && (st.creds != nil || st.csg == stageSecurity) {
		return 0, loginErr(LoginAuthFailure, "authentication required but not done")
	}
	if st.target != nil {
		if lerr := c.srv.checkLimits(st.target, c.params.InitiatorName, st.isid); lerr != nil {
			return 0, lerr
		}
	}
	s := &Session{srv: c.srv, target: st.target, isid: st.isid, params: c.params, loginAt: time.Now(),
		discovery: c.params.SessionType == "Discovery", conn: c, view: newLUNView(st.acl)}
	s.expCmdSN.Store(st.cmdSN)
	s.avgBytes.Store(initialAvgBytes)
	if !s.discovery {
		s.nexus = &scsi.Nexus{
			ID:            c.srv.nexusID.Add(1),
			InitiatorPort: fmt.Sprintf("%s,i,0x%x", c.params.InitiatorName, st.isid),
			InitiatorName: c.params.InitiatorName,
			TargetPort:    fmt.Sprintf("%s,t,0x%04x", st.target.Name, c.tpgt),
			RelativePort:  c.tpgt,
			ReadOnly:      st.acl != nil && st.acl.ReadOnly,
		}
		if s.view != nil {
			s.nexus.LUNs = s.view.visible()
		}
	}
	c.srv.register(s)
	if s.nexus != nil {
		st.target.SCSI.AddNexus(s.nexus)
		st.target.attachQoS(s)
	}
	// A session under rate limits starts with the window they allow.
	w := s.window()
	s.slots.Store(w)
	s.maxCmdSN.Store(st.cmdSN + w - 1)
	c.sess = s
	c.log = c.log.With(zap.Uint16("tsih", s.tsih), zap.String("isid", s.ISID()))
	c.log.Info("login complete", zap.String("session_type", c.params.SessionType),
		zap.Bool("header_digest", c.params.HeaderDigest), zap.Bool("data_digest", c.params.DataDigest),
		zap.Uint32("max_burst", c.params.MaxBurstLength), zap.Bool("immediate_data", c.params.ImmediateData),
		zap.Bool("initial_r2t", c.params.InitialR2T))
	return s.tsih, nil
}

// loginRespond queues a Login Response; it is written at the next flush.
// It refuses to answer with more than maxLoginData bytes of text (many
// unknown keys, each answered NotUnderstood): the login is then refused.
func (c *conn) loginRespond(st *loginState, h *Header, transit bool, nsg int, kvs []KV, tsih uint16) *LoginError {
	text := EncodeText(kvs)
	if len(text) > maxLoginData {
		return loginErr(LoginInitiatorError, "the answer to this Login Request would be %d bytes, more than the %d allowed during login",
			len(text), maxLoginData)
	}
	var b BHS
	b[0] = byte(OpLoginResp)
	b[1] = byte(st.csg << 2)
	if transit {
		b[1] |= 0x80 | byte(nsg)
	}
	copy(b[8:14], st.isid[:])
	b.SetU16(14, tsih)
	b.SetU32(offITT, st.itt)
	b.SetU32(offCmdSN, c.statSN)
	c.statSN++
	b.SetU32(offExpStatSN, st.cmdSN)
	if c.sess != nil {
		b.SetU32(offMaxCmdSN, c.sess.maxCmdSN.Load())
	} else {
		b.SetU32(offMaxCmdSN, st.cmdSN+c.srv.opts.CmdWindow-1)
	}
	c.tr.Queue(&b, text)
	if !transit || nsg != stageFullFeature {
		c.tr.Flush()
	}
	return nil
}

// authenticate handles AuthMethod and the CHAP keys of one request.
func (c *conn) authenticate(st *loginState, csg int, kvs []KV) ([]KV, *LoginError) {
	keys := make(map[string]string)
	for _, kv := range kvs {
		if kv.Key == "AuthMethod" || strings.HasPrefix(kv.Key, "CHAP_") {
			if csg != stageSecurity {
				return nil, loginErr(LoginInitiatorError, "%s outside the security stage", kv.Key)
			}
			keys[kv.Key] = kv.Value
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	var resp []KV
	if m, ok := keys["AuthMethod"]; ok {
		switch {
		case st.creds != nil && hasValue(m, "CHAP"):
			st.chap = &chapState{secret: st.creds}
			resp = append(resp, KV{"AuthMethod", "CHAP"})
		case st.creds == nil && hasValue(m, "None"):
			st.authDone = true
			resp = append(resp, KV{"AuthMethod", "None"})
		case st.creds != nil:
			return nil, loginErr(LoginAuthFailure, "CHAP is required but the initiator offered AuthMethod=%s", truncate(m))
		default:
			return nil, loginErr(LoginAuthFailure, "initiator requires AuthMethod=%s; no credentials are configured for it", truncate(m))
		}
	}
	if st.chap == nil {
		if _, ok := keys["CHAP_A"]; ok {
			return nil, loginErr(LoginInitiatorError, "CHAP keys before AuthMethod=CHAP was agreed")
		}
		return resp, nil
	}
	if a, ok := keys["CHAP_A"]; ok && st.chap.step == 0 {
		r, lerr := st.chap.chapAlgorithm(a)
		if lerr != nil {
			return nil, lerr
		}
		return append(resp, r...), nil
	}
	if _, ok := keys["CHAP_R"]; ok && st.chap.step == 1 {
		r, lerr := st.chap.chapResponse(keys)
		if lerr != nil {
			return nil, lerr
		}
		st.authDone = true
		c.log.Info("CHAP authentication succeeded", zap.Bool("mutual", len(r) > 0))
		return append(resp, r...), nil
	}
	if len(resp) == 0 {
		return nil, loginErr(LoginAuthFailure, "CHAP keys out of order")
	}
	return resp, nil
}

// hasValue reports whether a comma-separated list holds v.
func hasValue(list, v string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == v {
			return true
		}
	}
	return false
}

// ValidName checks an iSCSI name against its syntax (RFC 7143 4.2.7,
// RFC 3722): at most 223 bytes of UTF-8; iqn.yyyy-mm.naming-authority with
// an optional :unique part, eui. and 16 hex digits, or naa. and 16 or 32
// hex digits. In the ASCII range only letters, digits, '-', '.' and ':'
// may appear; beyond it, letters and digits (stringprep's output).
func ValidName(n string) error {
	if len(n) > 223 {
		return fmt.Errorf("%q is longer than 223 bytes", truncate(n))
	}
	if !utf8.ValidString(n) {
		return fmt.Errorf("%q is not valid UTF-8", truncate(strings.ToValidUTF8(n, "\ufffd")))
	}
	lower := strings.ToLower(n)
	switch {
	case strings.HasPrefix(lower, "iqn."):
		if !iqnDate(n[4:]) {
			return fmt.Errorf("%q is not of the form iqn.yyyy-mm.reversed.domain[:name]", truncate(n))
		}
	case strings.HasPrefix(lower, "eui."):
		if len(n) != 20 || !isHex(n[4:]) {
			return fmt.Errorf("%q is not eui. followed by 16 hex digits", truncate(n))
		}
	case strings.HasPrefix(lower, "naa."):
		if len(n) != 20 && len(n) != 36 || !isHex(n[4:]) {
			return fmt.Errorf("%q is not naa. followed by 16 or 32 hex digits", truncate(n))
		}
	default:
		return fmt.Errorf("%q does not start with iqn., eui. or naa", truncate(n))
	}
	for _, r := range n {
		if !nameRune(r) {
			return fmt.Errorf("%q contains %q, which an iSCSI name may not", truncate(n), r)
		}
	}
	return nil
}

// iqnDate checks what follows "iqn.": yyyy-mm, a dot and a naming authority.
func iqnDate(s string) bool {
	if len(s) < 9 || s[4] != '-' || s[7] != '.' {
		return false
	}
	for _, i := range []int{0, 1, 2, 3, 5, 6} {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}

// nameRune reports whether r may appear in an iSCSI name.
func nameRune(r rune) bool {
	switch {
	case r < utf8.RuneSelf:
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == ':'
	default:
		return unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r)
	}
}
