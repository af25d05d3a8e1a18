//go:build linux

package rdma

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestPortDownEvent takes the rxe device's netdev down and up again (only when
// RDMA_TEST_PORT_EVENTS=1, since it disturbs the machine) and expects PORT_ERR, ErrPortDown from
// CheckPort, then PORT_ACTIVE, all through the netpoller-driven async event channel.
func TestPortDownEvent(t *testing.T) {
	dev := testDevice(t)
	if os.Getenv("RDMA_TEST_PORT_EVENTS") != "1" || dev.Parent == "" {
		t.Skip("set RDMA_TEST_PORT_EVENTS=1 on a machine whose rxe netdev may flap")
	}
	link, err := netlink.LinkByName(dev.Parent)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenWith(dev, testProvider)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait := func(want AsyncEventType) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-c.Events():
				if ev.Type == want {
					if ev.Port != 1 {
						t.Errorf("%v for port %d, want 1", ev.Type, ev.Port)
					}
					return
				}
			case <-timeout:
				t.Fatalf("no %v event", want)
			}
		}
	}
	if err := netlink.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	wait(EventPortErr)
	if err := c.CheckPort(1); !errors.Is(err, ErrPortDown) {
		t.Errorf("CheckPort with the link down: %v, want ErrPortDown", err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	wait(EventPortActive)
	if err := c.CheckPort(1); err != nil {
		t.Errorf("CheckPort after link up: %v", err)
	}
}

// memlockEnv makes the test binary register memory as an unprivileged user (see TestMain).
const memlockEnv = "RDMA_TEST_MEMLOCK_CHILD"

// memlockChild runs without CAP_IPC_LOCK under a 1 MiB RLIMIT_MEMLOCK: a 16 MiB registration
// must fail with ErrMemlock and leave no fd behind.
func memlockChild() int {
	lim := unix.Rlimit{Cur: 1 << 20, Max: 1 << 20}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		fmt.Println("setrlimit:", err)
		return 1
	}
	devs, err := Devices()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fds := len(mustReadDir("/proc/self/fd"))
	c, err := OpenWith(devs[0], testProvider)
	if errors.Is(err, unix.EACCES) {
		fmt.Println("SKIP:", err)
		return 0
	}
	if err != nil {
		fmt.Println(err)
		return 1
	}
	pd, err := c.AllocPD()
	if err != nil {
		fmt.Println(err)
		return 1
	}
	_, _, err = pd.AllocBuffer(16<<20, AccessLocalWrite)
	if !errors.Is(err, ErrMemlock) {
		fmt.Println("16 MiB registration under a 1 MiB memlock limit:", err)
		return 1
	}
	fmt.Println("OK:", err)
	if err := c.Close(); err != nil {
		fmt.Println(err)
		return 1
	}
	if n := len(mustReadDir("/proc/self/fd")); n != fds {
		fmt.Printf("%d fds after Close, %d before\n", n, fds)
		return 1
	}
	return 0
}

func mustReadDir(p string) []os.DirEntry {
	ents, _ := os.ReadDir(p)
	return ents
}

func TestMRMemlock(t *testing.T) {
	testDevice(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to start an unprivileged child")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), memlockEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged child: %v\n%s", err, out)
	}
	if len(out) > 4 && string(out[:4]) == "SKIP" {
		t.Skipf("child: %s", out)
	}
	t.Logf("child: %s", out)
}

// TestDeviceRemoval deletes the rxe device under two connected endpoints (only when
// RDMA_TEST_DEVICE_REMOVAL=1) and expects both connections to end with ErrDeviceRemoved, the
// removal to finish once they are closed, nothing to leak, and the device to come back.
func TestDeviceRemoval(t *testing.T) {
	dev := testDevice(t)
	if os.Getenv("RDMA_TEST_DEVICE_REMOVAL") != "1" || dev.Parent == "" {
		t.Skip("set RDMA_TEST_DEVICE_REMOVAL=1 on a machine whose rxe device may be deleted and re-added")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fds0 := countFDs(t)
	pool := NewDevicePoolFor(testProvider)
	srvCM, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	cliCM, err := OpenCM()
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := connectPair(t, ctx, pool, srvCM, cliCM, 18603)
	delErr := make(chan error, 1)
	go func() { delErr <- DelLink(dev.Name) }()
	// Each side sees DEVICE_REMOVAL, unless the peer's disconnect reaches it first.
	removed := 0
	for _, s := range []*side{srv, cli} {
		select {
		case <-s.conn.Done():
			if !errors.Is(s.conn.Err(), ErrDisconnected) {
				t.Errorf("connection ended with %v, want ErrDisconnected", s.conn.Err())
			}
			if errors.Is(s.conn.Err(), ErrDeviceRemoved) {
				removed++
			}
			t.Logf("connection ended: %v", s.conn.Err())
		case <-time.After(10 * time.Second):
			t.Error("connection did not end after the device was deleted")
		}
	}
	if removed == 0 {
		t.Error("no connection reported ErrDeviceRemoved")
	}
	for _, s := range []*side{srv, cli} {
		if err := errors.Join(s.conn.Close(), s.mr.Dereg()); err != nil {
			t.Error(err)
		}
	}
	if err := errors.Join(pool.Drop(dev.NodeGUID), srvCM.Close(), cliCM.Close(), pool.Close()); err != nil {
		t.Error(err)
	}
	select {
	case err := <-delErr:
		if err != nil {
			t.Errorf("delete %s: %v", dev.Name, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("device deletion did not finish after every user closed it")
	}
	if n := countFDs(t); n != fds0 {
		t.Errorf("%d fds open after teardown, %d before", n, fds0)
	}
	if err := AddRxeLink(dev.Name, dev.Parent); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		d, err := DeviceByName(dev.Name)
		if err == nil && len(d.Ports) > 0 && d.Ports[0].State == "ACTIVE" {
			break
		}
		if i == 50 {
			t.Fatalf("%s not back and active: %+v %v", dev.Name, d, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
