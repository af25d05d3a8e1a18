//go:build !race

// The race detector allocates on its own; allocation counts are pinned without it.

package iscsi_test

import (
	"io"
	"net"
	"testing"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/qos"
)

// rawClient is a single-command-at-a-time initiator that reuses fixed
// buffers, so that an allocation counted while it runs is the target's.
type rawClient struct {
	nc    net.Conn
	cmdSN uint32
	hdr   [iscsi.BHSLen]byte
	data  []byte
	out   []byte
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{nc: nc, cmdSN: 1, data: make([]byte, 1<<20), out: make([]byte, iscsi.BHSLen+1<<20)}
	var b iscsi.BHS
	b[0] = 0x40 | byte(iscsi.OpLoginReq)
	b[1] = 0x80 | 1<<2 | 3 // T, CSG operational, NSG full feature
	b[8] = 0x80            // ISID
	b.SetU32(24, c.cmdSN)
	text := iscsi.EncodeText([]iscsi.KV{{Key: "InitiatorName", Value: testInitiator}, {Key: "TargetName", Value: testTarget},
		{Key: "SessionType", Value: "Normal"}, {Key: "HeaderDigest", Value: "None"}, {Key: "DataDigest", Value: "None"},
		{Key: "MaxRecvDataSegmentLength", Value: "262144"}, {Key: "ImmediateData", Value: "Yes"},
		{Key: "InitialR2T", Value: "No"}, {Key: "FirstBurstLength", Value: "262144"}})
	c.send(&b, text)
	if op := c.recv(t); op != iscsi.OpLoginResp || c.hdr[36] != 0 {
		t.Fatalf("login: opcode %v status %02x%02x", op, c.hdr[36], c.hdr[37])
	}
	// Clear the POWER ON unit attention.
	c.command(t, []byte{0x00, 0, 0, 0, 0, 0}, 0, false, nil)
	return c
}

func (c *rawClient) send(b *iscsi.BHS, data []byte) {
	b.SetDataLen(len(data))
	n := copy(c.out, b[:])
	n += copy(c.out[n:], data)
	n = iscsi.BHSLen + iscsi.Padded(len(data))
	if _, err := c.nc.Write(c.out[:n]); err != nil {
		panic(err)
	}
}

func (c *rawClient) recv(t testing.TB) iscsi.Opcode {
	if _, err := io.ReadFull(c.nc, c.hdr[:]); err != nil {
		t.Fatalf("read header: %v", err)
	}
	b := (*iscsi.BHS)(&c.hdr)
	if n := iscsi.Padded(b.DataLen()); n > 0 {
		if _, err := io.ReadFull(c.nc, c.data[:n]); err != nil {
			t.Fatalf("read data: %v", err)
		}
	}
	return b.Opcode()
}

// command runs one SCSI command and fails the test unless it ends GOOD.
func (c *rawClient) command(t testing.TB, cdb []byte, edtl uint32, write bool, data []byte) {
	var b iscsi.BHS
	b[0] = byte(iscsi.OpSCSICmd)
	b[1] = 0x80 | 1 // F, SIMPLE
	if write {
		b[1] |= 0x20
	} else if edtl > 0 {
		b[1] |= 0x40
	}
	b.SetU32(16, c.cmdSN) // ITT
	b.SetU32(20, edtl)
	b.SetU32(24, c.cmdSN)
	c.cmdSN++
	copy(b[32:], cdb)
	c.send(&b, data)
	for {
		op := c.recv(t)
		h := (*iscsi.BHS)(&c.hdr)
		switch {
		case op == iscsi.OpSCSIResp:
			if h[3] != 0 && cdb[0] != 0 {
				t.Fatalf("command %02x: status %02x", cdb[0], h[3])
			}
			return
		case op == iscsi.OpDataIn && h.Flags()&0x01 != 0:
			return
		case op == iscsi.OpDataIn:
		default:
			t.Fatalf("unexpected %v", op)
		}
	}
}

// TestSteadyStateAllocs pins that READ and WRITE over TCP allocate nothing
// per command in steady state (target side: the client reuses its buffers).
func TestSteadyStateAllocs(t *testing.T) {
	e := newEnv(t, nil)
	c := dialRaw(t, e.addr)
	read10 := []byte{0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0}
	write10 := []byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0}
	payload := make([]byte, 4096)
	// Rate limits cost no allocation either: under a limit the commands
	// stay below (they pass at once), and under one that makes each wait
	// for the pacer.
	readRun := func() { c.command(t, read10, 4096, false, nil) }
	writeRun := func() { c.command(t, write10, 4096, true, payload) }
	cases := []struct {
		name string
		lim  qos.Limits // on LUN 0
		run  func()
	}{
		{"read 4k", qos.Limits{}, readRun},
		{"write 4k immediate", qos.Limits{}, writeRun},
		{"read 4k under a limit not reached", qos.Limits{IOPS: 1e9}, readRun},
		{"write 4k paced at 4000 IOPS", qos.Limits{IOPS: 4000, Burst: qos.MinBurst}, writeRun},
	}
	tgt := e.srv.Target(testTarget)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tgt.SetQoS(iscsi.QoS{LUNs: map[uint64]qos.Limits{0: tc.lim}})
			for range 200 { // warm pools and maps
				tc.run()
			}
			if n := testing.AllocsPerRun(500, tc.run); n != 0 {
				t.Errorf("%s: %.2f allocations per command, want 0", tc.name, n)
			}
		})
	}
	if st := tgt.QoSStats(); len(st) != 1 || st[0].Stats.Throttled == 0 {
		t.Errorf("the paced case was not throttled: %+v", st)
	}
}

// BenchmarkRead4k measures one 4 KiB READ(10) round trip over loopback TCP.
func BenchmarkRead4k(b *testing.B) {
	e := newEnv(b, nil)
	c := dialRaw(b, e.addr)
	read10 := []byte{0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0}
	b.ReportAllocs()
	for b.Loop() {
		c.command(b, read10, 4096, false, nil)
	}
}

// TestTransportBatchAllocs pins that the TCP transport reuses its batch
// buffers, whichever PDU of a batch was queued last: a burst of write
// commands is answered by many responses without data.
func TestTransportBatchAllocs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go io.Copy(io.Discard, client)
	tr := iscsi.NewTCPTransport(server)
	tf, ok := tr.(interface{ TryFlush() (bool, error) })
	if !ok {
		t.Fatal("the TCP transport has no TryFlush")
	}
	data := make([]byte, 4096)
	var b iscsi.BHS
	tr.Queue(&b, data) // as login does: a batch with data comes first
	if err := tr.Flush(); err != nil {
		t.Fatal(err)
	}
	flush := tr.Flush
	tryFlush := func() error {
		if done, err := tf.TryFlush(); err != nil || done {
			return err
		}
		return tr.Flush()
	}
	cases := []struct {
		name  string
		data  []int // data segment length of each PDU
		flush func() error
	}{
		{"16 responses without data", make([]int, 16), flush},
		{"Data-In, then responses", []int{4096, 0, 0, 0, 0, 0, 0, 0, 0}, flush},
		{"16 responses without data, TryFlush", make([]int, 16), tryFlush},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			batch := func() {
				for _, n := range tc.data {
					tr.Queue(&b, data[:n])
				}
				if err := tc.flush(); err != nil {
					t.Fatal(err)
				}
			}
			batch()
			if n := testing.AllocsPerRun(100, batch); n != 0 {
				t.Errorf("%.2f allocations per batch, want 0", n)
			}
		})
	}
}
