package scsi

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/iserd/iserd/bdev"
)

// DiskConfig describes a direct-access logical unit.
type DiskConfig struct {
	// BlockSize is the logical block size: 512 or 4096.
	BlockSize uint32
	// PhysicalBlockSize is the size of the unit's physical blocks: a power
	// of two from BlockSize to maxPhysicalBlock (0 means BlockSize). It is
	// reported as LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT in READ
	// CAPACITY (16) and as the optimal transfer and unmap granularities of
	// the Block Limits VPD page; I/O of any alignment is still accepted.
	PhysicalBlockSize uint32
	// SanitizeRate bounds how fast SANITIZE OVERWRITE writes, in bytes per
	// second, so that it takes as long as on a disk; 0 is unbounded.
	SanitizeRate int64
	// ReadOnly write-protects the logical unit.
	ReadOnly bool
	// Thin enables logical block provisioning management: UNMAP, WRITE
	// SAME with UNMAP, GET LBA STATUS, LBPME in READ CAPACITY (16) and the
	// Logical Block Provisioning VPD page. The device must implement
	// bdev.Mapper for GET LBA STATUS.
	Thin bool
	// Serial is the unit serial number (VPD page 80h); by default the NAA
	// value in hexadecimal.
	Serial string
	// NAA is the 60-bit value of the locally assigned NAA 3h designator
	// (VPD page 83h) that names the logical unit worldwide. Zero derives it
	// from Serial, or draws it at random when Serial is empty too; give a
	// persisted value so the name survives restarts.
	NAA uint64
	// Vendor, Product and Revision are the INQUIRY identification strings
	// (defaults "ISERD", "VIRTUAL-DISK", "0001").
	Vendor, Product, Revision string
	// StateDir is the directory where the logical unit keeps state that
	// must survive restarts, in files replaced atomically: persistent
	// reservations registered with APTPL ("pr-<NAA>.state") and a sanitize
	// operation in progress or failed ("sanitize-<NAA>.state"). Empty
	// disables APTPL (REPORT CAPABILITIES then clears PTPL_C), and a
	// sanitize then does not survive a restart.
	StateDir string
	// Fence, when set, is asked right before every write reaches the
	// device and before every command that changes the medium or the
	// persistent reservations runs; while it refuses, they end with NOT
	// READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
	// A cluster node sets it; nil never refuses.
	Fence Fence
	// PRStore, when set, keeps the persistent reservations of the unit in
	// a store that several processes serving it share (cluster/prstore),
	// APTPL state included; StateDir then holds none. The disk owns it
	// from NewDisk on and closes it with itself.
	PRStore PRStore
	// CAWLock, when set, makes COMPARE AND WRITE atomic across the
	// processes that serve the unit (cluster/cawlock); commands that cannot
	// get it end with BUSY, or NOT READY, LOGICAL UNIT NOT ACCESSIBLE,
	// TARGET PORT IN UNAVAILABLE STATE once this process may not write.
	// The disk owns it from NewDisk on and closes it with itself.
	CAWLock CAWLock
}

// Limits the disk reports in the Block Limits VPD page and enforces.
const (
	maxTransferBytes  = 16 << 20   // MAXIMUM TRANSFER LENGTH
	optTransferBytes  = 1 << 20    // OPTIMAL TRANSFER LENGTH
	maxWriteSameBytes = 16 << 20   // MAXIMUM WRITE SAME LENGTH (< 65536 blocks)
	maxCAWBlocks      = 255        // MAXIMUM COMPARE AND WRITE LENGTH
	maxUnmapDescs     = 2048       // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
	maxUnmapBlocks    = 0xffffffff // MAXIMUM UNMAP LBA COUNT: no limit
	naaMask           = 1<<60 - 1
	maxPhysicalBlock  = 64 << 10 // largest PhysicalBlockSize
)

// Disk is an SBC-3 direct-access logical unit backed by a bdev.Device.
// Several Targets may share it; its state is per logical unit.
type Disk struct {
	dev    bdev.Device
	mapper bdev.Mapper // nil when not thin
	cfg    DiskConfig
	shift  uint // log2(BlockSize)
	pshift uint // log2(PhysicalBlockSize / BlockSize)

	tgt    atomic.Pointer[Target] // the target the disk is attached to
	mode   atomic.Pointer[modeState]
	modeMu sync.Mutex             // serialises MODE SELECT
	res    atomic.Pointer[holder] // SCSI-2 reservation holder
	ua     uaTable
	locks  rangeLock
	writes writeGate     // writes in the device, for reservation changes to wait for
	resets atomic.Uint64 // resets other nodes shared: they abort every task started before

	pr      atomic.Pointer[prState] // persistent reservations; nil: none ever
	prMu    sync.Mutex              // serialises PERSISTENT RESERVE OUT
	prSaved bool                    // an APTPL state file exists (under prMu)
	prs     prShared                // with a PRStore
	copies  copyTable               // EXTENDED COPY results by list identifier

	san       atomic.Pointer[sanitizeState] // running or failed sanitize; nil: none
	sanStop   chan struct{}                 // closed by Close: a running sanitize stops
	sanWG     sync.WaitGroup                // the running sanitize's goroutine
	closeOnce sync.Once
}

// NewDisk returns a logical unit over dev.
func NewDisk(dev bdev.Device, cfg DiskConfig) (*Disk, error) {
	if dev == nil {
		return nil, errors.New("new disk: nil device")
	}
	switch cfg.BlockSize {
	case 0:
		cfg.BlockSize = 512
	case 512, 4096:
	default:
		return nil, fmt.Errorf("new disk: block size %d: must be 512 or 4096", cfg.BlockSize)
	}
	if cfg.PhysicalBlockSize == 0 {
		cfg.PhysicalBlockSize = cfg.BlockSize
	}
	if err := CheckPhysicalBlockSize(cfg.BlockSize, cfg.PhysicalBlockSize); err != nil {
		return nil, fmt.Errorf("new disk: %w", err)
	}
	if cfg.SanitizeRate < 0 {
		return nil, fmt.Errorf("new disk: sanitize rate %d is negative", cfg.SanitizeRate)
	}
	d := &Disk{dev: dev, cfg: cfg, sanStop: make(chan struct{})}
	for 1<<d.shift < cfg.BlockSize {
		d.shift++
	}
	for cfg.BlockSize<<d.pshift < cfg.PhysicalBlockSize {
		d.pshift++
	}
	if cfg.Thin {
		m, ok := dev.(bdev.Mapper)
		if !ok {
			return nil, errors.New("new disk: thin provisioning needs a device that implements bdev.Mapper")
		}
		d.mapper = m
	}
	if err := d.identify(); err != nil {
		return nil, err
	}
	d.mode.Store(&defaultMode)
	d.ua.init()
	pr, err := d.loadPR()
	if err != nil {
		return nil, fmt.Errorf("new disk: %w", err)
	}
	if pr != nil {
		d.pr.Store(pr)
	}
	if err := d.loadSanitize(); err != nil {
		return nil, fmt.Errorf("new disk: %w", err)
	}
	if cfg.PRStore != nil {
		if err := d.openPRStore(); err != nil {
			return nil, fmt.Errorf("new disk: %w", err)
		}
	}
	return d, nil
}

// CheckPhysicalBlockSize reports whether physical is a physical block size
// a unit with block-byte logical blocks can have: a power of two from
// block to 64 KiB.
func CheckPhysicalBlockSize(block, physical uint32) error {
	if physical < block || physical > maxPhysicalBlock || physical&(physical-1) != 0 {
		return fmt.Errorf("physical block size %d: must be a power of two from the block size %d to %d",
			physical, block, maxPhysicalBlock)
	}
	return nil
}

// identify fills in the default identification strings and designators.
func (d *Disk) identify() error {
	c := &d.cfg
	c.Vendor = inquiryString(c.Vendor, "ISERD", 8)
	c.Product = inquiryString(c.Product, "VIRTUAL-DISK", 16)
	c.Revision = inquiryString(c.Revision, "0001", 4)
	switch {
	case c.NAA != 0:
	case c.Serial != "":
		h := fnv.New64a()
		h.Write([]byte(c.Serial))
		c.NAA = h.Sum64()
	default:
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("new disk: draw NAA identifier: %w", err)
		}
		c.NAA = binary.BigEndian.Uint64(b[:])
	}
	c.NAA &= naaMask
	if c.NAA == 0 {
		c.NAA = 1
	}
	if c.Serial == "" {
		c.Serial = fmt.Sprintf("%015x", c.NAA)
	}
	if err := CheckSerial(c.Serial); err != nil {
		return fmt.Errorf("new disk: %w", err)
	}
	return nil
}

// MaxSerialLen is the longest unit serial number: the T10 vendor ID
// designator of VPD page 83h (one length byte) carries it after the
// vendor (8 bytes), the product (up to 16) and a colon.
const MaxSerialLen = 255 - 8 - 16 - 1

// CheckSerial reports whether s can be a unit serial number (VPD page
// 80h): printable ASCII, at most MaxSerialLen bytes.
func CheckSerial(s string) error {
	for _, r := range s {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("serial %q: only printable ASCII is allowed", s)
		}
	}
	if len(s) > MaxSerialLen {
		return fmt.Errorf("serial is %d bytes, at most %d fit the device identification VPD page", len(s), MaxSerialLen)
	}
	return nil
}

// inquiryString returns s (or def when s is empty) restricted to printable
// ASCII and cut to n bytes.
func inquiryString(s, def string, n int) string {
	if s == "" {
		s = def
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '_'
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
	}
	return s
}

// Close stops a running sanitize operation (it resumes at the next open
// when StateDir is set) and closes the backing device.
func (d *Disk) Close() error {
	d.closeOnce.Do(func() { close(d.sanStop) })
	d.sanWG.Wait()
	perr := d.closePRStore()
	if l := d.cfg.CAWLock; l != nil {
		if err := l.Close(); err != nil {
			perr = errors.Join(perr, fmt.Errorf("close disk: compare and write lock: %w", err))
		}
	}
	if err := d.dev.Close(); err != nil {
		return fmt.Errorf("close disk: %w", err)
	}
	return perr
}

// Config returns the configuration with defaults filled in.
func (d *Disk) Config() DiskConfig { return d.cfg }

// blocks is the current capacity in logical blocks.
func (d *Disk) blocks() uint64 { return uint64(d.dev.Size()) >> d.shift }

// blockSize is the logical block size in bytes.
func (d *Disk) blockSize() int { return int(d.cfg.BlockSize) }

// checkRange fails with LBA OUT OF RANGE unless [lba, lba+n) is inside.
func (d *Disk) checkRange(lba, n uint64) (senseData, bool) {
	if c := d.blocks(); lba > c || n > c-lba {
		return lbaOutOfRange(lba), false
	}
	return senseData{}, true
}

// writable fails with DATA PROTECT when the unit is write-protected by
// configuration or by the SWP bit of the control mode page, or when c
// comes from a read-only nexus (an ACL setting).
func (d *Disk) writable(c *Command) (senseData, bool) {
	if d.cfg.ReadOnly || d.mode.Load().swp || c.Nexus != nil && c.Nexus.ReadOnly {
		return writeProtected, false
	}
	return senseData{}, true
}

// result is how a command handler ends: done with a status (and sense
// for CHECK CONDITION), or pending while an asynchronous step runs.
type result struct {
	sense   senseData
	status  Status
	pending bool
}

var (
	good    = result{}
	pending = result{pending: true}
)

// fail is a CHECK CONDITION result.
func fail(s senseData) result { return result{status: StatusCheckCondition, sense: s} }

// complete records r in c and hands c back to the transport.
func (d *Disk) complete(c *Command, r result) {
	c.Status = r.status
	if r.status == StatusCheckCondition {
		desc := d != nil && d.mode.Load().dsense
		c.SenseLen = r.sense.encode(c.Sense[:], desc)
		c.InLen = 0
	}
	c.Done(c)
}

// respond copies data-in bytes for a command whose allocation length is
// alloc: the command transfers min(len(data), alloc) bytes.
func respond(c *Command, data []byte, alloc int) result {
	n := min(len(data), alloc)
	c.Wanted = n
	c.InLen = copy(c.DataIn, data[:n])
	return good
}

// ioError maps a bdev error to sense data for a read or a write.
func ioError(err error, write bool) senseData {
	switch {
	case errors.Is(err, ErrFenced):
		return fencedSense
	case errors.Is(err, bdev.ErrNoSpace):
		return senseData{key: keyDataProtect, code: ascSpaceAllocFailed}
	case errors.Is(err, bdev.ErrRange):
		return senseData{key: keyIllegalRequest, code: ascLBAOutOfRange}
	case errors.Is(err, bdev.ErrMedium) && write:
		return senseData{key: keyMediumError, code: ascWriteError}
	case errors.Is(err, bdev.ErrMedium):
		return senseData{key: keyMediumError, code: ascUnrecoveredRead}
	}
	return senseData{key: keyAbortedCommand, code: ascInternalTargetFailure}
}
