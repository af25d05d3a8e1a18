package iscsi

import (
	"fmt"
	"net"
	"strconv"

	"go.uber.org/zap"
)

// textContinuation is a Text Response too long for one PDU, handed out as
// the initiator asks for more (RFC 7143 11.11).
type textContinuation struct {
	ttt  uint32
	rest []byte
}

// handleText answers a Text Request: SendTargets and renegotiation of
// keys; long answers go out over several PDUs with the C bit.
func (c *conn) handleText(h *Header, pl *payload) error {
	data, ok, err := c.readAll(h, pl)
	if err != nil || !ok {
		return err
	}
	if h.Flags()&0x40 != 0 { // C bit: the initiator's text continues; not needed by any key we take
		c.reject(&h.BHS, rejectNotSupported)
		return nil
	}
	var answer []byte
	if ttt := h.U32(offTTT); ttt != NoTag {
		if c.textCont == nil || c.textCont.ttt != ttt {
			c.reject(&h.BHS, rejectInvalidField)
			return nil
		}
		answer = c.textCont.rest
		c.textCont = nil
	} else {
		c.textCont = nil
		kvs, err := ParseText(data)
		if err != nil {
			c.log.Warn("malformed Text Request: rejected", zap.Error(err))
			c.reject(&h.BHS, rejectProtocol)
			return nil
		}
		answer = EncodeText(c.textAnswer(kvs))
	}
	var b BHS
	b[0] = byte(OpTextResp)
	b[1] = 0x80
	b.SetLUN(h.LUN())
	b.SetU32(offITT, h.ITT())
	b.SetU32(offTTT, NoTag)
	if max := int(c.params.MaxXmitDataSegmentLength); len(answer) > max {
		c.textCont = &textContinuation{ttt: c.nextTTT(), rest: answer[max:]}
		answer = answer[:max]
		b[1] = 0x40
		b.SetU32(offTTT, c.textCont.ttt)
	}
	c.send(&b, answer, true)
	return nil
}

// textAnswer answers the keys of a Text Request in full feature phase.
func (c *conn) textAnswer(kvs []KV) []KV {
	var resp []KV
	for _, kv := range kvs {
		switch kv.Key {
		case "SendTargets":
			resp = append(resp, c.sendTargets(kv.Value)...)
		default:
			if _, known := keyDefs[kv.Key]; known {
				resp = append(resp, KV{kv.Key, valReject}) // no renegotiation in full feature phase
			} else {
				resp = append(resp, KV{kv.Key, valNotUnderstood})
			}
		}
	}
	return resp
}

// sendTargets lists targets and their addresses (RFC 7143 appendix C).
func (c *conn) sendTargets(which string) []KV {
	s := c.sess
	var names []string
	switch {
	case which == "All" && s.discovery:
		c.srv.mu.Lock()
		for n, t := range c.srv.targets {
			if _, ok := t.Access().lookup(c.params.InitiatorName); ok {
				names = append(names, n)
			}
		}
		c.srv.mu.Unlock()
		sortStrings(names)
	case which == "" && !s.discovery:
		names = []string{s.target.Name}
	case which != "" && which != "All" && c.srv.target(which) != nil:
		names = []string{which}
	}
	var resp []KV
	for _, n := range names {
		t := c.srv.target(n)
		if t == nil {
			continue
		}
		resp = append(resp, KV{"TargetName", n})
		for _, p := range c.portalAddrs() {
			resp = append(resp, KV{"TargetAddress", fmt.Sprintf("%s,%d", p.Addr, p.TPGT)})
		}
	}
	return resp
}

// portalAddrs lists the server's portals, replacing an unspecified host
// with the address this connection arrived on.
func (c *conn) portalAddrs() []Portal {
	c.srv.mu.Lock()
	portals := append([]Portal(nil), c.srv.portals...)
	c.srv.mu.Unlock()
	local, _, _ := net.SplitHostPort(c.tr.LocalAddr().String())
	var out []Portal
	seen := map[string]bool{}
	for _, p := range portals {
		host, port, err := net.SplitHostPort(p.Addr)
		if err != nil {
			continue
		}
		if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
			host = local
		}
		a := net.JoinHostPort(host, port)
		if !seen[a] {
			seen[a] = true
			out = append(out, Portal{Addr: a, TPGT: p.TPGT})
		}
	}
	if len(out) == 0 {
		out = append(out, Portal{Addr: c.tr.LocalAddr().String(), TPGT: 1})
	}
	return out
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// handleLogout closes the session or connection after its tasks end; the
// session is forgotten before the response goes out.
func (c *conn) handleLogout(h *Header, pl *payload) error {
	if err := pl.discard(); err != nil {
		return err
	}
	reason := h.Flags() & 0x7f
	code := byte(0)
	switch reason {
	case 0, 1: // close the session; close the connection (the session's only one)
		if reason == 1 && h.U16(20) != c.cid {
			code = 1 // CID not found
		}
	case 2:
		code = 2 // connection recovery is not supported at ErrorRecoveryLevel 0
	default:
		c.reject(&h.BHS, rejectInvalidField)
		return nil
	}
	if code == 0 {
		c.waitTasks(func(*task) bool { return true })
		// The I_T nexus ends here, not when the connection is gone: once
		// the initiator has the response, its other sessions must no
		// longer meet what the nexus held (a SCSI-2 reservation).
		c.srv.unregister(c.sess)
	}
	var b BHS
	b[0] = byte(OpLogoutResp)
	b[1] = 0x80
	b[2] = code
	b.SetU32(offITT, h.ITT())
	b.SetU16(40, uint16(c.sess.params.DefaultTime2Wait))
	b.SetU16(42, uint16(c.sess.params.DefaultTime2Retain))
	c.send(&b, nil, true)
	if code == 0 {
		c.log.Info("logout", zap.String("reason", strconv.Itoa(int(reason))))
		c.enqueue(outItem{kind: outClose})
	}
	return nil
}
