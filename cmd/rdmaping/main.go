//go:build linux

// Command rdmaping measures RDMA latency and bandwidth between two endpoints over the cgo-free
// rdma package, like rdma-core's ibv_rc_pingpong and rping do.
//
//	rdmaping -s [-a 0.0.0.0] [-p 7471] [-once]                 server
//	rdmaping -a 192.0.2.1 [-t send,write,read,rping] [-S 4096,65536] [-n 1000] [-q 16]   client
//
// Tests (client side; the server only echoes SENDs and exposes its buffer):
//
//	send   SEND ping-pong: usec per round trip (ibv_rc_pingpong's usec/iter) and Mbit/s
//	write  RDMA WRITE: latency of one signaled write, then bandwidth with -q writes in flight
//	read   RDMA READ: the same for reads
//	rping  rping's cycle: per iteration 4 SENDs (2 ping-pongs), 1 RDMA READ and 1 RDMA WRITE
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/iserd/iserd/rdma"
)

func main() {
	var (
		server = flag.Bool("s", false, "run as server")
		addr   = flag.String("a", "", "address to listen on (server, default 0.0.0.0) or connect to (client)")
		port   = flag.Uint("p", 7471, "rdma_cm port")
		once   = flag.Bool("once", false, "server: exit after the first connection ends")
		tests  = flag.String("t", "send,write,read,rping", "client: tests to run, comma separated")
		sizes  = flag.String("S", "4096", "client: message sizes in bytes, comma separated")
		iters  = flag.Int("n", 1000, "client: iterations per test and size")
		depth  = flag.Int("q", 16, "client: operations in flight for the bandwidth runs")
		poll   = flag.Bool("poll", false, "busy-poll the completion queue instead of sleeping on completion events")
		sysw   = flag.Bool("syscallwait", false, "sleep on completion events in epoll_wait(2) on a thread of its own instead of the Go netpoller")
		prov   = flag.String("provider", "auto", "how to drive the device: auto, native (kernel ABI, rxe) or libibverbs (rdma-core's providers)")
	)
	flag.Parse()
	var err error
	if provider, err = rdma.ParseProviderChoice(*prov); err != nil {
		fmt.Fprintln(os.Stderr, "rdmaping:", err)
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "rdmaping: unexpected argument %q\n", flag.Arg(0))
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *server {
		err = serve(ctx, *addr, uint16(*port), *once, *poll, *sysw)
	} else {
		err = client(ctx, *addr, uint16(*port), *tests, *sizes, *iters, *depth, *poll, *sysw)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "rdmaping:", err)
		os.Exit(1)
	}
}

// provider is the -provider flag.
var provider rdma.ProviderChoice

const (
	access    = rdma.AccessLocalWrite | rdma.AccessRemoteRead | rdma.AccessRemoteWrite
	recvSlots = 8
)

// hello is the client's request private data: the largest message it will send.
func hello(maxSize int) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(maxSize)) }

// bufInfo is the server's reply private data: where the client may READ and WRITE.
func bufInfo(mr *rdma.MR) []byte {
	b := binary.LittleEndian.AppendUint64(nil, mr.Addr)
	b = binary.LittleEndian.AppendUint32(b, mr.RKey)
	return binary.LittleEndian.AppendUint32(b, uint32(mr.Len))
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1<<30 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func parseAddr(s string, port uint16, def string) (netip.AddrPort, error) {
	if s == "" {
		s = def
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad address %q: %w", s, err)
	}
	return netip.AddrPortFrom(a, port), nil
}

// endpoint is one side's registered memory: a data region and receive slots.
type endpoint struct {
	data    *rdma.MR
	dataBuf []byte
	recv    *rdma.MR
	recvBuf []byte
	slot    int
	wc      []rdma.WorkCompletion
	conn    *rdma.Conn
}

func newEndpoint(pd *rdma.PD, dataSize, slotSize int) (*endpoint, error) {
	e := &endpoint{slot: slotSize, wc: make([]rdma.WorkCompletion, 32)}
	var err error
	if e.data, e.dataBuf, err = pd.AllocBuffer(dataSize, access); err != nil {
		return nil, err
	}
	for i := range e.dataBuf {
		e.dataBuf[i] = byte(i*31 + i>>8)
	}
	if e.recv, e.recvBuf, err = pd.AllocBuffer(slotSize*recvSlots, rdma.AccessLocalWrite); err != nil {
		e.data.Dereg()
		return nil, err
	}
	return e, nil
}

func (e *endpoint) release() error {
	return errors.Join(e.data.Dereg(), e.recv.Dereg())
}

func (e *endpoint) postRecv(c *rdma.Conn, i int) error {
	return c.QP.PostRecv(rdma.RecvWR{ID: uint64(i), SGL: []rdma.SGE{e.recv.SGE(i*e.slot, e.slot)}})
}

func (e *endpoint) prepare(c *rdma.Conn) error {
	for i := 0; i < recvSlots; i++ {
		if err := e.postRecv(c, i); err != nil {
			return err
		}
	}
	return nil
}

// pollSpins is CQ.Spin under -poll: empty polls before a completion wait sleeps.
const pollSpins = 1 << 30

func spins(poll bool) int {
	if poll {
		return pollSpins
	}
	return 0
}

func serve(ctx context.Context, addr string, port uint16, once, poll, sysw bool) error {
	ap, err := parseAddr(addr, port, "0.0.0.0")
	if err != nil {
		return err
	}
	cm, err := rdma.OpenCM()
	if err != nil {
		return err
	}
	defer cm.Close()
	pool := rdma.NewDevicePoolFor(provider)
	defer pool.Close()
	l, err := rdma.Listen(cm, ap, 16)
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Printf("rdmaping: listening on %v\n", ap)
	for {
		req, err := l.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		err = serveOne(ctx, pool, req, poll, sysw)
		if err != nil {
			fmt.Fprintln(os.Stderr, "rdmaping: connection:", err)
		}
		if once {
			return err
		}
	}
}

func serveOne(ctx context.Context, pool *rdma.DevicePool, req *rdma.ConnRequest, poll, sysw bool) error {
	if len(req.PrivateData) < 4 {
		req.Reject(nil)
		return errors.New("connect request without rdmaping hello")
	}
	maxSize := int(binary.LittleEndian.Uint32(req.PrivateData))
	if maxSize < 1 || maxSize > 1<<30 {
		req.Reject(nil)
		return fmt.Errorf("client asks for %d-byte messages", maxSize)
	}
	info, err := req.ID.QueryAddr()
	if err != nil {
		req.Reject(nil)
		return err
	}
	pd, err := pool.PD(info.NodeGUID)
	if err != nil {
		req.Reject(nil)
		return err
	}
	e, err := newEndpoint(pd, maxSize, maxSize)
	if err != nil {
		req.Reject(nil)
		return err
	}
	defer e.release()
	c, err := req.Accept(ctx, rdma.ConnConfig{Pool: pool, PrivateData: bufInfo(e.data), Prepare: e.prepare,
		SendWR: recvSlots * 2, RecvWR: recvSlots * 2, SyscallWait: sysw})
	if err != nil {
		return err
	}
	defer c.Close()
	c.CQ.Spin = spins(poll)
	fmt.Printf("rdmaping: connection from %v, messages up to %d bytes\n", c.Dst, maxSize)
	// Echo every SEND back from its receive slot; repost the slot once the echo is sent.
	for {
		n, err := c.CQ.Wait(ctx, e.wc)
		if err != nil {
			return err
		}
		for _, wc := range e.wc[:n] {
			if wc.Status != rdma.WCSuccess {
				if errors.Is(c.Err(), rdma.ErrDisconnected) || wc.Status == rdma.WCWRFlushErr {
					fmt.Println("rdmaping: client disconnected")
					return nil
				}
				return wc.Err()
			}
			switch wc.Opcode {
			case rdma.WCRecv:
				err = c.QP.PostSend(rdma.SendWR{ID: wc.ID, Opcode: rdma.OpSend, Flags: rdma.SendSignaled,
					SGL: []rdma.SGE{e.recv.SGE(int(wc.ID)*e.slot, int(wc.ByteLen))}})
			case rdma.WCSend:
				err = e.postRecv(c, int(wc.ID))
			}
			if err != nil {
				return err
			}
		}
	}
}

func client(ctx context.Context, addr string, port uint16, tests, sizeList string, iters, depth int, poll, sysw bool) error {
	if addr == "" {
		return errors.New("client needs -a ADDRESS (or -s for a server)")
	}
	ap, err := parseAddr(addr, port, "")
	if err != nil {
		return err
	}
	sizes, err := parseSizes(sizeList)
	if err != nil {
		return err
	}
	if iters < 1 || depth < 1 || depth > 256 {
		return fmt.Errorf("bad -n %d or -q %d", iters, depth)
	}
	maxSize := 0
	for _, s := range sizes {
		maxSize = max(maxSize, s)
	}
	cm, err := rdma.OpenCM()
	if err != nil {
		return err
	}
	defer cm.Close()
	pool := rdma.NewDevicePoolFor(provider)
	defer pool.Close()
	var e *endpoint
	prepare := func(c *rdma.Conn) error {
		var err error
		if e, err = newEndpoint(c.PD, maxSize, maxSize); err != nil {
			return err
		}
		return e.prepare(c)
	}
	c, err := rdma.Dial(ctx, cm, ap, rdma.ConnConfig{Pool: pool, PrivateData: hello(maxSize), Prepare: prepare,
		SendWR: max(depth*2, recvSlots*2), RecvWR: recvSlots * 2, MaxInline: 64, SyscallWait: sysw})
	if err != nil {
		if e != nil {
			e.release()
		}
		return err
	}
	defer e.release()
	defer c.Close()
	e.conn = c
	c.CQ.Spin = spins(poll)
	fmt.Printf("device %s, provider %s\n", c.PD.Context().Device.Name, c.PD.Context().Provider())
	if len(c.PeerPrivateData) < 16 {
		return errors.New("server reply without buffer information")
	}
	r := remote{addr: binary.LittleEndian.Uint64(c.PeerPrivateData), rkey: binary.LittleEndian.Uint32(c.PeerPrivateData[8:]),
		size: int(binary.LittleEndian.Uint32(c.PeerPrivateData[12:]))}
	for _, t := range strings.Split(tests, ",") {
		for _, size := range sizes {
			if size > r.size {
				return fmt.Errorf("size %d exceeds the server's %d-byte buffer", size, r.size)
			}
			if err := runTest(ctx, e, r, strings.TrimSpace(t), size, iters, depth); err != nil {
				return fmt.Errorf("%s %d bytes: %w", t, size, err)
			}
		}
	}
	return nil
}

type remote struct {
	addr uint64
	rkey uint32
	size int
}

// report prints one result line; lat, when not empty, holds per-iteration latencies for the
// median and the maximum.
func report(test, what string, size, iters int, el time.Duration, bytesMoved int, lat []time.Duration) {
	us := float64(el.Nanoseconds()) / 1e3 / float64(iters)
	mbit := float64(bytesMoved) * 8 / el.Seconds() / 1e6
	extra := ""
	if len(lat) > 0 {
		slices.Sort(lat)
		extra = fmt.Sprintf(" (median %.1f, p99 %.1f, max %.1f usec)", usec(lat[len(lat)/2]), usec(lat[len(lat)*99/100]), usec(lat[len(lat)-1]))
	}
	fmt.Printf("rdmaping: %-5s %-3s size=%d iters=%d: %.2f usec/iter, %.2f Mbit/sec%s\n", test, what, size, iters, us, mbit, extra)
}

func usec(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// timeIters runs f iters times and returns the total and per-iteration durations.
func timeIters(iters int, f func() error) (time.Duration, []time.Duration, error) {
	lat := make([]time.Duration, iters)
	start := time.Now()
	prev := start
	for i := range lat {
		if err := f(); err != nil {
			return 0, nil, err
		}
		now := time.Now()
		lat[i], prev = now.Sub(prev), now
	}
	return time.Since(start), lat, nil
}

func runTest(ctx context.Context, e *endpoint, r remote, test string, size, iters, depth int) error {
	switch test {
	case "send":
		el, lat, err := timeIters(iters, func() error { return e.pingPong(ctx, size) })
		if err != nil {
			return err
		}
		report(test, "lat", size, iters, el, 2*size*iters, lat)
	case "write", "read":
		op := rdma.OpRDMAWrite
		if test == "read" {
			op = rdma.OpRDMARead
		}
		el, lat, err := timeIters(iters, func() error { return e.oneSided(ctx, op, r, size, 1, 1) })
		if err != nil {
			return err
		}
		report(test, "lat", size, iters, el, size*iters, lat)
		start := time.Now()
		if err := e.oneSided(ctx, op, r, size, iters, depth); err != nil {
			return err
		}
		report(test, "bw", size, iters, time.Since(start), size*iters, nil)
	case "rping":
		el, lat, err := timeIters(iters, func() error {
			return errors.Join(e.pingPong(ctx, 64), e.oneSided(ctx, rdma.OpRDMARead, r, size, 1, 1),
				e.pingPong(ctx, 64), e.oneSided(ctx, rdma.OpRDMAWrite, r, size, 1, 1))
		})
		if err != nil {
			return err
		}
		report(test, "lat", size, iters, el, 2*size*iters, lat)
	default:
		return fmt.Errorf("unknown test %q (want send, write, read or rping)", test)
	}
	return nil
}

// pingPong SENDs size bytes and waits for the echo.
func (e *endpoint) pingPong(ctx context.Context, size int) error {
	c := e.conn
	if err := c.QP.PostSend(rdma.SendWR{ID: 1 << 32, Opcode: rdma.OpSend, Flags: rdma.SendSignaled,
		SGL: []rdma.SGE{e.data.SGE(0, size)}}); err != nil {
		return err
	}
	sent, echoed := false, false
	for !sent || !echoed {
		n, err := c.CQ.Wait(ctx, e.wc)
		if err != nil {
			return err
		}
		for _, wc := range e.wc[:n] {
			if err := wc.Err(); err != nil {
				return err
			}
			switch wc.Opcode {
			case rdma.WCSend:
				sent = true
			case rdma.WCRecv:
				if int(wc.ByteLen) != size {
					return fmt.Errorf("echo of %d bytes, sent %d", wc.ByteLen, size)
				}
				if off := int(wc.ID) * e.slot; !bytes.Equal(e.recvBuf[off:off+size], e.dataBuf[:size]) {
					return fmt.Errorf("echo of %d bytes differs from what was sent", size)
				}
				echoed = true
				if err := e.postRecv(c, int(wc.ID)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// oneSided runs total RDMA WRITEs or READs of size bytes with up to window in flight,
// each signaled, and waits for all of them.
func (e *endpoint) oneSided(ctx context.Context, op rdma.Opcode, r remote, size, total, window int) error {
	c := e.conn
	posted, done := 0, 0
	for done < total {
		for posted < total && posted-done < window {
			if err := c.QP.PostSend(rdma.SendWR{ID: uint64(posted), Opcode: op, Flags: rdma.SendSignaled,
				SGL: []rdma.SGE{e.data.SGE(0, size)}, RemoteAddr: r.addr, RKey: r.rkey}); err != nil {
				return err
			}
			posted++
		}
		n, err := c.CQ.Wait(ctx, e.wc)
		if err != nil {
			return err
		}
		for _, wc := range e.wc[:n] {
			if err := wc.Err(); err != nil {
				return err
			}
			done++
		}
	}
	return nil
}
