package initiator

import (
	"fmt"
	"strconv"
	"time"

	"github.com/iserd/iserd/iscsi"
)

// Login stages (CSG/NSG values).
const (
	StageSecurity    = 0
	StageOperational = 1
	StageFullFeature = 3
)

// loginTimeout bounds the wait for each Login Response.
const loginTimeout = 10 * time.Second

// LoginStep is one Login Request exchange, with every header field a test
// may want to get wrong.
type LoginStep struct {
	CSG, NSG   int
	Transit    bool
	Continue   bool // set the C bit on the (last) PDU even though the text ends
	VersionMax byte
	VersionMin byte
	KVs        []iscsi.KV
	// Text, when not nil, is sent instead of the encoded KVs.
	Text []byte
	// Split, when positive, sends the text in PDUs of at most Split bytes,
	// all but the last with the C bit, each acknowledged by the target.
	Split int
}

// LoginResponse is a Login Response as received.
type LoginResponse struct {
	BHS     iscsi.BHS
	Status  iscsi.LoginStatus
	KVs     []iscsi.KV
	Transit bool
	CSG     int
	NSG     int
	TSIH    uint16
}

// LoginError is a login refused by the target.
type LoginError struct {
	Status iscsi.LoginStatus
}

func (e *LoginError) Error() string {
	return fmt.Sprintf("login refused with status 0x%04x", uint16(e.Status))
}

// LoginStep sends one Login Request (or several with the C bit, see Split)
// and returns the target's final answer to it. A successful transit to full
// feature phase applies the negotiated parameters and starts the reader.
func (c *Conn) LoginStep(s LoginStep) (*LoginResponse, error) {
	if c.ffp {
		return nil, fmt.Errorf("login step: already in full feature phase")
	}
	text := s.Text
	if text == nil {
		text = iscsi.EncodeText(s.KVs)
		c.noteSent(s.KVs)
	}
	for {
		chunk, more := text, false
		if s.Split > 0 && len(text) > s.Split {
			chunk, more = text[:s.Split], true
		}
		text = text[len(chunk):]
		cont := more || s.Continue && len(text) == 0
		var b iscsi.BHS
		b[0] = byte(iscsi.OpLoginReq) | 0x40
		b[1] = byte(s.CSG&3)<<2 | byte(s.NSG&3)
		if s.Transit && !more {
			b[1] |= 0x80
		}
		if cont {
			b[1] |= 0x40
		}
		b[2], b[3] = s.VersionMax, s.VersionMin
		copy(b[8:14], c.isid[:])
		b.SetU16(14, c.tsih)
		b.SetU32(16, 0)
		b.SetU16(20, c.cid)
		b.SetU32(24, c.cmdSN)
		b.SetU32(28, c.expStatSN.Load())
		if err := c.WritePDU(&PDU{BHS: b, Data: chunk}); err != nil {
			return nil, fmt.Errorf("send Login Request: %w", err)
		}
		r, err := c.readLoginResponse()
		if err != nil {
			return nil, err
		}
		if more && r.Status == iscsi.LoginSuccess {
			continue // the target acknowledged a partial text
		}
		return r, nil
	}
}

// readLoginResponse reads and decodes one Login Response.
func (c *Conn) readLoginResponse() (*LoginResponse, error) {
	p, err := c.readLockstep(loginTimeout)
	if err != nil {
		return nil, fmt.Errorf("read Login Response: %w", err)
	}
	b := &p.BHS
	if b.Opcode() != iscsi.OpLoginResp {
		return nil, fmt.Errorf("got a %v during login", b.Opcode())
	}
	c.expStatSN.Store(b.U32(24) + 1)
	r := &LoginResponse{BHS: *b, Status: iscsi.LoginStatus(b.U16(36)), Transit: b.Flags()&0x80 != 0,
		CSG: int(b.Flags() >> 2 & 3), NSG: int(b.Flags() & 3), TSIH: b.U16(14)}
	if r.Status != iscsi.LoginSuccess {
		return r, nil
	}
	if b.Flags()&0x40 != 0 {
		return nil, fmt.Errorf("multi-PDU Login Responses are not supported")
	}
	if r.KVs, err = iscsi.ParseText(p.Data); err != nil {
		return nil, fmt.Errorf("Login Response text: %w", err)
	}
	c.noteAnswers(r.KVs)
	if r.Transit && r.NSG == StageFullFeature {
		c.tsih = r.TSIH
		c.snmu.Lock()
		c.expCmdSN, c.maxCmdSN = b.U32(28), b.U32(32)
		c.snmu.Unlock()
		c.hdrDigest, c.dataDigest = c.params.HeaderDigest, c.params.DataDigest
		c.startReader()
	}
	return r, nil
}

// noteSent records our own declarations among the keys we send.
func (c *Conn) noteSent(kvs []iscsi.KV) {
	for _, kv := range kvs {
		if kv.Key == "MaxRecvDataSegmentLength" {
			if v, err := strconv.ParseUint(kv.Value, 0, 32); err == nil {
				c.params.MaxRecvDataSegmentLength = uint32(v)
			}
		}
	}
}

// noteAnswers applies the target's answers to the parameters in force.
func (c *Conn) noteAnswers(kvs []iscsi.KV) {
	p := &c.params
	for _, kv := range kvs {
		var num *uint32
		switch kv.Key {
		case "HeaderDigest":
			p.HeaderDigest = kv.Value == "CRC32C"
		case "DataDigest":
			p.DataDigest = kv.Value == "CRC32C"
		case "InitialR2T", "ImmediateData":
			if kv.Value != "Yes" && kv.Value != "No" {
				continue
			}
			if kv.Key == "InitialR2T" {
				p.InitialR2T = kv.Value == "Yes"
			} else {
				p.ImmediateData = kv.Value == "Yes"
			}
		case "MaxRecvDataSegmentLength":
			num = &p.MaxXmitDataSegmentLength
		case "MaxBurstLength":
			num = &p.MaxBurstLength
		case "FirstBurstLength":
			num = &p.FirstBurstLength
		case "MaxOutstandingR2T":
			num = &p.MaxOutstandingR2T
		case "ErrorRecoveryLevel":
			num = &p.ErrorRecoveryLevel
		}
		if num == nil {
			continue
		}
		if v, err := strconv.ParseUint(kv.Value, 0, 32); err == nil {
			*num = uint32(v)
		}
	}
}

// LoginOptions describe a whole login.
type LoginOptions struct {
	InitiatorName string
	// TargetName is required for a normal session; leave it empty with
	// Discovery.
	TargetName string
	Discovery  bool
	// ISID replaces the connection's default ISID when not zero; logging in
	// again with the same ISID reinstates the session.
	ISID [6]byte
	// SecurityStage starts with a security stage offering AuthMethod=None.
	SecurityStage bool
	// Keys are the operational keys offered, in order.
	Keys []iscsi.KV
	// Split sends the operational text in PDUs of at most Split bytes.
	Split int
}

// Login runs a whole login: an optional security stage, then the
// operational stage with the keys, into full feature phase.
func (c *Conn) Login(o LoginOptions) (*LoginResponse, error) {
	if o.ISID != [6]byte{} {
		c.isid = o.ISID
	}
	ident := []iscsi.KV{{Key: "InitiatorName", Value: o.InitiatorName}}
	if o.Discovery {
		ident = append(ident, iscsi.KV{Key: "SessionType", Value: "Discovery"})
	} else {
		ident = append(ident, iscsi.KV{Key: "TargetName", Value: o.TargetName})
	}
	if o.SecurityStage {
		r, err := c.LoginStep(LoginStep{CSG: StageSecurity, NSG: StageOperational, Transit: true,
			KVs: append(ident, iscsi.KV{Key: "AuthMethod", Value: "None"})})
		if err != nil {
			return nil, fmt.Errorf("security stage: %w", err)
		}
		if r.Status != iscsi.LoginSuccess {
			return r, &LoginError{Status: r.Status}
		}
		ident = nil
	}
	r, err := c.LoginStep(LoginStep{CSG: StageOperational, NSG: StageFullFeature, Transit: true,
		KVs: append(ident, o.Keys...), Split: o.Split})
	if err != nil {
		return nil, fmt.Errorf("operational stage: %w", err)
	}
	if r.Status != iscsi.LoginSuccess {
		return r, &LoginError{Status: r.Status}
	}
	if !r.Transit || r.NSG != StageFullFeature {
		return r, fmt.Errorf("target did not move to full feature phase (T=%v NSG=%d)", r.Transit, r.NSG)
	}
	return r, nil
}
