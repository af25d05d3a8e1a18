//go:build linux

package rdma

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The rdma_cm tests listen on $RDMA_TEST_ADDR (default 192.0.2.1, the VM's rxe address).
func testAddr(port uint16) netip.AddrPort {
	a, err := netip.ParseAddr(os.Getenv("RDMA_TEST_ADDR"))
	if err != nil {
		a = netip.AddrFrom4([4]byte{192, 0, 2, 1})
	}
	return netip.AddrPortFrom(a, port)
}

const maxXfer = 4 << 20

// side is one end of a test connection with a registered buffer of maxXfer bytes.
type side struct {
	conn *Conn
	mr   *MR
	buf  []byte
}

// bufInfo is exchanged in private data: where the peer may RDMA READ/WRITE.
func bufInfo(mr *MR) []byte {
	b := make([]byte, 12)
	binary.LittleEndian.PutUint64(b, mr.Addr)
	binary.LittleEndian.PutUint32(b[8:], mr.RKey)
	return b
}

func parseBufInfo(t testing.TB, b []byte) (uint64, uint32) {
	if len(b) < 12 {
		t.Fatalf("peer private data of %d bytes, want 12", len(b))
	}
	return binary.LittleEndian.Uint64(b), binary.LittleEndian.Uint32(b[8:])
}

func waitWC(ctx context.Context, cq *CQ) (WorkCompletion, error) {
	var wc [1]WorkCompletion
	if _, err := cq.Wait(ctx, wc[:]); err != nil {
		return WorkCompletion{}, err
	}
	return wc[0], wc[0].Err()
}

func mustWC(t testing.TB, ctx context.Context, cq *CQ, op WCOpcode) WorkCompletion {
	t.Helper()
	wc, err := waitWC(ctx, cq)
	if err != nil {
		t.Fatal(err)
	}
	if wc.Opcode != op {
		t.Fatalf("completion opcode %d, want %d (%+v)", wc.Opcode, op, wc)
	}
	return wc
}

func pattern(b []byte, seed uint32) {
	x := seed*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
}

// resourceCounts sums the rdma resource tracking counters (pd, mr, cq, qp, cm_id) over devices.
// Callers have found an RDMA device (testDevice skips otherwise), so a netlink error or an empty
// list fails the test: the leak checks built on these counts must never pass unchecked.
func resourceCounts(t testing.TB) map[string]uint64 {
	t.Helper()
	res, err := netlink.RdmaResourceList()
	if err != nil {
		t.Fatalf("rdma resource list (netlink RDMA_NLDEV_CMD_RES_GET): %v", err)
	}
	if len(res) == 0 {
		t.Fatal("rdma resource list: netlink lists no device, yet one was found")
	}
	m := map[string]uint64{}
	for _, r := range res {
		for k, v := range r.RdmaResourceSummaryEntries {
			m[k] += v
		}
	}
	return m
}

// connectPair sets up server and client on two CMs of this process.
func connectPair(t *testing.T, ctx context.Context, pool *DevicePool, srvCM, cliCM *CM, port uint16) (srv, cli *side) {
	t.Helper()
	srv, cli = &side{}, &side{}
	var err error
	for _, s := range []*side{srv, cli} {
		// Both sides are on the one VM device: take its PD from the pool up front.
		dev := testDevice(t)
		pd, err := pool.PD(dev.NodeGUID)
		if err != nil {
			t.Fatal(err)
		}
		if s.mr, s.buf, err = pd.AllocBuffer(maxXfer, AccessLocalWrite|AccessRemoteRead|AccessRemoteWrite); err != nil {
			t.Fatal(err)
		}
	}
	addr := testAddr(port)
	l, err := Listen(srvCM, addr, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		c   *Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		req, err := l.Next(ctx)
		if err != nil {
			done <- result{nil, err}
			return
		}
		if !bytes.Equal(req.PrivateData[:12], bufInfo(cli.mr)) {
			done <- result{nil, fmt.Errorf("request private data %x, want %x", req.PrivateData, bufInfo(cli.mr))}
			return
		}
		c, err := req.Accept(ctx, ConnConfig{Pool: pool, PrivateData: bufInfo(srv.mr), MaxInline: 64,
			Prepare: func(c *Conn) error { return c.QP.PostRecv(RecvWR{ID: 1, SGL: []SGE{srv.mr.SGE(0, maxXfer)}}) }})
		done <- result{c, err}
	}()
	cli.conn, err = Dial(ctx, cliCM, addr, ConnConfig{Pool: pool, PrivateData: bufInfo(cli.mr), MaxInline: 64})
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	srv.conn = r.c
	return srv, cli
}

func xferSizes() []int {
	var s []int
	for n := 1; n <= maxXfer; n <<= 1 {
		s = append(s, n)
		if n > 2 && n < maxXfer {
			s = append(s, n+1, n-1)
		}
	}
	return s
}

// TestCMTransfer connects two endpoints through rdma_cm and moves SENDs, RDMA WRITEs and RDMA
// READs of 1 byte to 4 MiB with every byte checked, then makes 10,000 round trips, and checks that
// no fd or RDMA resource is left behind.
func TestCMTransfer(t *testing.T) {
	testDevice(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fds0, res0 := countFDs(t), resourceCounts(t)
	pool := NewDevicePoolFor(testProvider)
	srvCM, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	cliCM, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := connectPair(t, ctx, pool, srvCM, cliCM, 18600)
	checkProvider(t, srv.conn.PD.Context())
	// Move the server's connection to a CM of its own: its disconnect must arrive there.
	migCM, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.conn.ID.Migrate(migCM); err != nil {
		t.Fatal(err)
	}
	raddr, rkey := parseBufInfo(t, cli.conn.PeerPrivateData)
	if raddr != srv.mr.Addr || rkey != srv.mr.RKey {
		t.Fatalf("reply private data names %#x/%#x, server buffer is %#x/%#x", raddr, rkey, srv.mr.Addr, srv.mr.RKey)
	}
	if a, _, err := cli.conn.ID.InitQPAttr(QPRTS); err == nil {
		r, _, _ := cli.conn.ID.InitQPAttr(QPRTR)
		t.Logf("rdma_cm proposes (Conn overrides timeout and min RNR timer): path MTU %d, timeout %d, retry %d, RNR retry %d, min RNR timer %d, rd atomic %d/%d",
			r.PathMTU.Bytes(), a.Timeout, a.RetryCnt, a.RNRRetry, r.MinRNRTimer, a.MaxRdAtomic, r.MaxDestRdAtomic)
	}
	recvPosted := true // the server posted one receive in Prepare
	for i, n := range xferSizes() {
		// SEND client -> server.
		if !recvPosted {
			if err := srv.conn.QP.PostRecv(RecvWR{ID: 1, SGL: []SGE{srv.mr.SGE(0, maxXfer)}}); err != nil {
				t.Fatal(err)
			}
		}
		pattern(cli.buf[:n], uint32(i))
		if err := cli.conn.QP.PostSend(SendWR{ID: 2, Opcode: OpSend, Flags: SendSignaled, SGL: []SGE{cli.mr.SGE(0, n)}}); err != nil {
			t.Fatal(err)
		}
		mustWC(t, ctx, cli.conn.CQ, WCSend)
		if wc := mustWC(t, ctx, srv.conn.CQ, WCRecv); wc.ByteLen != uint32(n) {
			t.Fatalf("SEND %d: received %d bytes", n, wc.ByteLen)
		}
		if !bytes.Equal(srv.buf[:n], cli.buf[:n]) {
			t.Fatalf("SEND of %d bytes corrupted", n)
		}
		// RDMA WRITE client -> server, then a zero-byte SEND: RC ordering puts the data first.
		if err := srv.conn.QP.PostRecv(RecvWR{ID: 3}); err != nil {
			t.Fatal(err)
		}
		pattern(cli.buf[:n], uint32(i)+1000)
		err := cli.conn.QP.PostSend(
			SendWR{ID: 4, Opcode: OpRDMAWrite, SGL: []SGE{cli.mr.SGE(0, n)}, RemoteAddr: raddr, RKey: rkey},
			SendWR{ID: 5, Opcode: OpSend, Flags: SendSignaled})
		if err != nil {
			t.Fatal(err)
		}
		mustWC(t, ctx, cli.conn.CQ, WCSend)
		mustWC(t, ctx, srv.conn.CQ, WCRecv)
		if !bytes.Equal(srv.buf[:n], cli.buf[:n]) {
			t.Fatalf("RDMA WRITE of %d bytes corrupted", n)
		}
		// RDMA READ server -> client.
		pattern(srv.buf[:n], uint32(i)+2000)
		if err := cli.conn.QP.PostSend(SendWR{ID: 6, Opcode: OpRDMARead, Flags: SendSignaled, SGL: []SGE{cli.mr.SGE(0, n)},
			RemoteAddr: raddr, RKey: rkey}); err != nil {
			t.Fatal(err)
		}
		mustWC(t, ctx, cli.conn.CQ, WCRDMARead)
		if !bytes.Equal(srv.buf[:n], cli.buf[:n]) {
			t.Fatalf("RDMA READ of %d bytes corrupted", n)
		}
		recvPosted = false
	}

	// 10,000 round trips of 64-byte SENDs (inline), receives reposted each time.
	const rounds = 10000
	start := time.Now()
	for i := 0; i < rounds; i++ {
		if err := srv.conn.QP.PostRecv(RecvWR{ID: 7, SGL: []SGE{srv.mr.SGE(0, 64)}}); err != nil {
			t.Fatal(err)
		}
		if err := cli.conn.QP.PostRecv(RecvWR{ID: 8, SGL: []SGE{cli.mr.SGE(0, 64)}}); err != nil {
			t.Fatal(err)
		}
		binary.LittleEndian.PutUint64(cli.buf[64:], uint64(i))
		if err := cli.conn.QP.PostSend(SendWR{ID: 9, Opcode: OpSend, Flags: SendSignaled, Inline: cli.buf[64:128]}); err != nil {
			t.Fatal(err)
		}
		mustWC(t, ctx, cli.conn.CQ, WCSend)
		mustWC(t, ctx, srv.conn.CQ, WCRecv)
		if got := binary.LittleEndian.Uint64(srv.buf); got != uint64(i) {
			t.Fatalf("round %d: server got %d", i, got)
		}
		if err := srv.conn.QP.PostSend(SendWR{ID: 10, Opcode: OpSend, Flags: SendSignaled, Inline: srv.buf[:64]}); err != nil {
			t.Fatal(err)
		}
		mustWC(t, ctx, srv.conn.CQ, WCSend)
		mustWC(t, ctx, cli.conn.CQ, WCRecv)
		if got := binary.LittleEndian.Uint64(cli.buf); got != uint64(i) {
			t.Fatalf("round %d: client got %d", i, got)
		}
	}
	el := time.Since(start)
	t.Logf("%d SEND round trips in %v: %.1f us each", rounds, el, float64(el.Microseconds())/rounds)
	mid := resourceCounts(t)

	// Teardown: the client disconnects; the server sees DISCONNECTED.
	if err := cli.conn.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-srv.conn.Done():
		if !errors.Is(srv.conn.Err(), ErrDisconnected) {
			t.Errorf("server connection ended with %v", srv.conn.Err())
		}
	case <-ctx.Done():
		t.Fatal("server saw no disconnect")
	}
	if err := srv.conn.Close(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*side{srv, cli} {
		if err := s.mr.Dereg(); err != nil {
			t.Fatal(err)
		}
	}
	if err := errors.Join(srvCM.Close(), cliCM.Close(), migCM.Close(), pool.Close()); err != nil {
		t.Fatal(err)
	}
	if n := countFDs(t); n != fds0 {
		t.Errorf("%d fds open after teardown, %d before", n, fds0)
	}
	t.Logf("resources before %v, while connected %v", res0, mid)
	if after := resourceCounts(t); fmt.Sprint(after) != fmt.Sprint(res0) {
		t.Errorf("rdma resources after teardown %v, before %v", after, res0)
	}
	if mid["mr"] != res0["mr"]+2 {
		t.Errorf("%d MRs while connected, want %d", mid["mr"], res0["mr"]+2)
	}
}

// TestCMReject checks that a rejected connect request reaches the client with its private data
// and releases everything on both sides.
func TestCMReject(t *testing.T) {
	testDevice(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fds0 := countFDs(t)
	pool := NewDevicePoolFor(testProvider)
	cm, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	addr := testAddr(18601)
	l, err := Listen(cm, addr, 4)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if req, err := l.Next(ctx); err == nil {
			req.Reject([]byte("go away"))
		}
	}()
	_, err = Dial(ctx, cm, addr, ConnConfig{Pool: pool, PrivateData: []byte("hello")})
	var rej *RejectedError
	if !errors.As(err, &rej) || !bytes.HasPrefix(rej.PrivateData, []byte("go away")) {
		t.Fatalf("dial a rejecting server: %v, want RejectedError with the private data", err)
	}
	if err := errors.Join(l.Close(), cm.Close(), pool.Close()); err != nil {
		t.Fatal(err)
	}
	if n := countFDs(t); n != fds0 {
		t.Errorf("%d fds open after teardown, %d before", n, fds0)
	}
}

// peerEnv makes the test binary act as a killable echo server (see TestMain).
const peerEnv = "RDMA_TEST_PEER"

func TestMain(m *testing.M) {
	if port := os.Getenv(peerEnv); port != "" {
		os.Exit(runPeer(port))
	}
	if os.Getenv(memlockEnv) != "" {
		os.Exit(memlockChild())
	}
	os.Exit(m.Run())
}

// runPeer accepts one connection and answers every SEND with a SEND until it is killed.
func runPeer(port string) int {
	var p uint16
	fmt.Sscan(port, &p)
	ctx := context.Background()
	pool := NewDevicePoolFor(testProvider)
	cm, err := OpenCM()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dev, err := Devices()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pd, err := pool.PD(dev[0].NodeGUID)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mr, _, err := pd.AllocBuffer(maxXfer, AccessLocalWrite|AccessRemoteWrite|AccessRemoteRead)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := Listen(cm, testAddr(p), 1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	req, err := l.Next(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	post := func(c *Conn) error {
		for i := 0; i < 32; i++ {
			if err := c.QP.PostRecv(RecvWR{ID: uint64(i), SGL: []SGE{mr.SGE(0, 4096)}}); err != nil {
				return err
			}
		}
		return nil
	}
	c, err := req.Accept(ctx, ConnConfig{Pool: pool, PrivateData: bufInfo(mr), Prepare: post})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		wc, err := waitWC(ctx, c.CQ)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if wc.Opcode == WCRecv {
			c.QP.PostRecv(RecvWR{ID: wc.ID, SGL: []SGE{mr.SGE(0, 4096)}})
			c.QP.PostSend(SendWR{ID: 100, Opcode: OpSend, Flags: SendSignaled, SGL: []SGE{mr.SGE(0, 64)}})
		}
	}
}

// TestCMPeerKilled streams to a peer process, kills it with SIGKILL mid-stream and expects a clean
// error (failed completion or DISCONNECTED), then a teardown that leaves nothing behind.
func TestCMPeerKilled(t *testing.T) {
	testDevice(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fds0 := countFDs(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), peerEnv+"=18602")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make([]byte, 64)
	if n, err := out.Read(line); err != nil || !strings.Contains(string(line[:n]), "listening") {
		t.Fatalf("peer did not start: %q %v", line[:n], err)
	}
	pool := NewDevicePoolFor(testProvider)
	cm, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	dev := testDevice(t)
	pd, err := pool.PD(dev.NodeGUID)
	if err != nil {
		t.Fatal(err)
	}
	mr, _, err := pd.AllocBuffer(maxXfer, AccessLocalWrite)
	if err != nil {
		t.Fatal(err)
	}
	post := func(c *Conn) error {
		for i := 0; i < 32; i++ {
			if err := c.QP.PostRecv(RecvWR{ID: uint64(i), SGL: []SGE{mr.SGE(4096, 4096)}}); err != nil {
				return err
			}
		}
		return nil
	}
	c, err := Dial(ctx, cm, testAddr(18602), ConnConfig{Pool: pool, Prepare: post})
	if err != nil {
		t.Fatal(err)
	}
	raddr, rkey := parseBufInfo(t, c.PeerPrivateData)
	var failure error
	killed := false
	for i := 0; failure == nil && i < 100000; i++ {
		if i == 200 {
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
		err := c.QP.PostSend(
			SendWR{ID: 1, Opcode: OpRDMAWrite, SGL: []SGE{mr.SGE(0, 65536)}, RemoteAddr: raddr, RKey: rkey},
			SendWR{ID: 2, Opcode: OpSend, Flags: SendSignaled, SGL: []SGE{mr.SGE(0, 64)}})
		if err != nil {
			failure = err
			break
		}
		// Wait for our SEND and the echo.
		for got := 0; got < 2 && failure == nil; {
			wc, err := waitWC(ctx, c.CQ)
			if err != nil {
				failure = err
				break
			}
			if wc.Opcode == WCRecv {
				c.QP.PostRecv(RecvWR{ID: wc.ID, SGL: []SGE{mr.SGE(4096, 4096)}})
			}
			got++
		}
	}
	if !killed {
		t.Fatal("transfer failed before the peer was killed")
	}
	if failure == nil {
		t.Fatal("no error after the peer was killed")
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("no disconnect after the peer was killed")
	}
	t.Logf("after SIGKILL of the peer: %v", failure)
	cmd.Wait()
	if err := errors.Join(c.Close(), mr.Dereg(), cm.Close(), pool.Close()); err != nil {
		t.Fatal(err)
	}
	if n := countFDs(t); n != fds0 {
		t.Errorf("%d fds open after teardown, %d before", n, fds0)
	}
}
