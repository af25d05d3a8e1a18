package initiator

import (
	"bytes"
	"context"
	"fmt"

	"github.com/iserd/iserd/iscsi"
)

// Ping sends a NOP-Out (immediate) carrying data and returns the data of the
// NOP-In echo.
func (c *Conn) Ping(ctx context.Context, data []byte) ([]byte, error) {
	t := c.newTask(false)
	var b iscsi.BHS
	b[0] = byte(iscsi.OpNOPOut) | 0x40
	b[1] = 0x80
	b.SetU32(16, t.ITT)
	b.SetU32(20, iscsi.NoTag)
	if err := c.issue(ctx, t, &b, data, nil, nil); err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	p, err := t.waitReply(ctx)
	if err != nil {
		return nil, fmt.Errorf("ping: %w", err)
	}
	if p.BHS.Opcode() != iscsi.OpNOPIn {
		return nil, fmt.Errorf("ping answered with a %v", p.BHS.Opcode())
	}
	return p.Data, nil
}

// Task management functions (RFC 7143 11.5.1).
const (
	TMFAbortTask       = 1
	TMFAbortTaskSet    = 2
	TMFClearACA        = 3
	TMFClearTaskSet    = 4
	TMFLUReset         = 5
	TMFTargetWarmReset = 6
	TMFTargetColdReset = 7
	TMFTaskReassign    = 8
)

// TMF is a task management request.
type TMF struct {
	Function byte
	LUN      uint64
	// RefTask is the task to abort (ABORT TASK); its ITT and CmdSN are sent.
	RefTask *Task
	// RefITT and RefCmdSN are used when RefTask is nil.
	RefITT, RefCmdSN uint32
}

// TaskManagement sends an immediate Task Management Request and returns the
// response code (0: function complete).
func (c *Conn) TaskManagement(ctx context.Context, m TMF) (byte, error) {
	t := c.newTask(false)
	var b iscsi.BHS
	b[0] = byte(iscsi.OpTaskMgmt) | 0x40
	b[1] = 0x80 | m.Function&0x7f
	b.SetLUN(iscsi.EncodeLUN(m.LUN))
	b.SetU32(16, t.ITT)
	rtt, refSN := m.RefITT, m.RefCmdSN
	if m.RefTask != nil {
		rtt, refSN = m.RefTask.ITT, m.RefTask.CmdSN
	}
	if m.Function != TMFAbortTask {
		rtt = iscsi.NoTag
	}
	b.SetU32(20, rtt)
	b.SetU32(32, refSN)
	if err := c.issue(ctx, t, &b, nil, nil, nil); err != nil {
		return 0, fmt.Errorf("task management function %d: %w", m.Function, err)
	}
	p, err := t.waitReply(ctx)
	if err != nil {
		return 0, fmt.Errorf("task management function %d: %w", m.Function, err)
	}
	if p.BHS.Opcode() != iscsi.OpTaskResp {
		return 0, fmt.Errorf("task management function %d answered with a %v", m.Function, p.BHS.Opcode())
	}
	return p.BHS[2], nil
}

// Text sends a Text Request and returns the whole answer, asking for the
// continuation of a response split with the C bit.
func (c *Conn) Text(ctx context.Context, kvs []iscsi.KV) ([]iscsi.KV, error) {
	data := iscsi.EncodeText(kvs)
	ttt := uint32(iscsi.NoTag)
	var answer []byte
	itt := c.NewITT()
	for range 1024 {
		t := &Task{c: c, ITT: itt, done: make(chan struct{})}
		var b iscsi.BHS
		b[0] = byte(iscsi.OpTextReq)
		b[1] = 0x80
		b.SetU32(16, t.ITT)
		b.SetU32(20, ttt)
		if err := c.issue(ctx, t, &b, data, nil, nil); err != nil {
			return nil, fmt.Errorf("text request: %w", err)
		}
		p, err := t.waitReply(ctx)
		if err != nil {
			return nil, fmt.Errorf("text request: %w", err)
		}
		if p.BHS.Opcode() != iscsi.OpTextResp {
			return nil, fmt.Errorf("text request answered with a %v", p.BHS.Opcode())
		}
		answer = append(answer, p.Data...)
		if p.BHS.Flags()&0x40 == 0 {
			return parseList(answer)
		}
		ttt, data = p.BHS.U32(20), nil
	}
	return nil, fmt.Errorf("text response still continues after 1024 PDUs")
}

// parseList parses a text answer whose keys may repeat (SendTargets lists
// TargetName and TargetAddress once per target and portal): each pair is
// checked by iscsi.ParseText on its own, which refuses repeats within one call.
func parseList(data []byte) ([]iscsi.KV, error) {
	var out []iscsi.KV
	for _, pair := range bytes.Split(data, []byte{0}) {
		if len(pair) == 0 {
			continue
		}
		kvs, err := iscsi.ParseText(pair)
		if err != nil {
			return nil, fmt.Errorf("text response: %w", err)
		}
		out = append(out, kvs...)
	}
	return out, nil
}

// SendTargets runs a SendTargets request (value "All" in a discovery
// session) and returns the answer's TargetName/TargetAddress pairs in order.
func (c *Conn) SendTargets(ctx context.Context, which string) ([]iscsi.KV, error) {
	return c.Text(ctx, []iscsi.KV{{Key: "SendTargets", Value: which}})
}

// Logout reasons.
const (
	LogoutSession    = 0
	LogoutConnection = 1
	LogoutRecovery   = 2
)

// Logout sends a Logout Request and returns the response code (0: success).
// The target closes the connection after a successful logout; call Close.
func (c *Conn) Logout(ctx context.Context, reason byte) (byte, error) {
	t := c.newTask(false)
	var b iscsi.BHS
	b[0] = byte(iscsi.OpLogoutReq) | 0x40
	b[1] = 0x80 | reason&0x7f
	b.SetU32(16, t.ITT)
	b.SetU16(20, c.cid)
	if err := c.issue(ctx, t, &b, nil, nil, nil); err != nil {
		return 0, fmt.Errorf("logout: %w", err)
	}
	p, err := t.waitReply(ctx)
	if err != nil {
		return 0, fmt.Errorf("logout: %w", err)
	}
	if p.BHS.Opcode() != iscsi.OpLogoutResp {
		return 0, fmt.Errorf("logout answered with a %v", p.BHS.Opcode())
	}
	return p.BHS[2], nil
}
