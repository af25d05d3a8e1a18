package iscsi

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// hardMaxData bounds any data segment read from the wire, whatever was
// negotiated: a larger DataSegmentLength ends the connection.
const hardMaxData = 16 << 20

// errHeaderDigest ends a connection: after a bad header the stream cannot be
// trusted to find the next PDU (RFC 7143 7.8, ERL 0).
var errHeaderDigest = errors.New("header digest error")

// framer reads and writes PDU framing (BHS, AHS, data, padding, digests) on
// a byte stream.
type framer struct {
	r          *bufio.Reader
	w          net.Conn
	hdrDigest  bool
	dataDigest bool
	ahs        [256 * 4]byte
	pad        [8]byte
	wbufs      net.Buffers
	hdrs       []byte // scratch for outgoing headers of one batch
}

func newFramer(c net.Conn) *framer {
	return &framer{r: bufio.NewReaderSize(c, 64<<10), w: c, hdrs: make([]byte, 0, 64*maxHdrBytes)}
}

// header is a received BHS with its AHS.
type header struct {
	BHS
	AHS []byte
}

// readHeader reads the next BHS and AHS and checks the header digest.
func (f *framer) readHeader(h *header) error {
	if _, err := io.ReadFull(f.r, h.BHS[:]); err != nil {
		return err
	}
	n := h.TotalAHSLen()
	h.AHS = f.ahs[:n]
	if _, err := io.ReadFull(f.r, h.AHS); err != nil {
		return fmt.Errorf("read AHS: %w", err)
	}
	if f.hdrDigest {
		if _, err := io.ReadFull(f.r, f.pad[:4]); err != nil {
			return fmt.Errorf("read header digest: %w", err)
		}
		crc := crc32.Update(crc32.Checksum(h.BHS[:], castagnoli), castagnoli, h.AHS)
		if binary.LittleEndian.Uint32(f.pad[:4]) != crc {
			return errHeaderDigest
		}
	}
	if h.DataLen() > hardMaxData {
		return fmt.Errorf("data segment of %d bytes is beyond any negotiable size", h.DataLen())
	}
	return nil
}

// readData reads the data segment announced by the last header into dst
// (len(dst) must equal the DataSegmentLength; nil discards it), then the
// padding and data digest. ok is false when the digest did not match.
func (f *framer) readData(dst []byte, n int) (ok bool, err error) {
	var crc uint32
	if dst != nil {
		if _, err := io.ReadFull(f.r, dst[:n]); err != nil {
			return false, fmt.Errorf("read data segment: %w", err)
		}
		crc = crc32.Checksum(dst[:n], castagnoli)
	} else if n > 0 {
		var scratch [4096]byte
		for left := n; left > 0; {
			c := min(left, len(scratch))
			if _, err := io.ReadFull(f.r, scratch[:c]); err != nil {
				return false, fmt.Errorf("skip data segment: %w", err)
			}
			crc = crc32.Update(crc, castagnoli, scratch[:c])
			left -= c
		}
	}
	pad := Padded(n) - n
	if pad > 0 {
		if _, err := io.ReadFull(f.r, f.pad[:pad]); err != nil {
			return false, fmt.Errorf("read padding: %w", err)
		}
		crc = crc32.Update(crc, castagnoli, f.pad[:pad])
	}
	if !f.dataDigest || n == 0 {
		return true, nil
	}
	if _, err := io.ReadFull(f.r, f.pad[4:8]); err != nil {
		return false, fmt.Errorf("read data digest: %w", err)
	}
	return binary.LittleEndian.Uint32(f.pad[4:8]) == crc, nil
}

var zeroPad [4]byte

// maxHdrBytes is the header-buffer room one PDU may need: BHS and two digests.
const maxHdrBytes = BHSLen + 8

// queue adds one PDU (header and data segment) to the batch being built,
// writing the batch out first when its header buffer is full.
func (f *framer) queue(bhs *BHS, data []byte) error {
	if cap(f.hdrs)-len(f.hdrs) < maxHdrBytes && len(f.hdrs) > 0 {
		if err := f.flush(); err != nil {
			return err
		}
	}
	bhs.SetDataLen(len(data))
	start := len(f.hdrs)
	f.hdrs = append(f.hdrs, bhs[:]...)
	if f.hdrDigest {
		f.hdrs = binary.LittleEndian.AppendUint32(f.hdrs, crc32.Checksum(bhs[:], castagnoli))
	}
	f.wbufs = append(f.wbufs, f.hdrs[start:len(f.hdrs):len(f.hdrs)])
	if len(data) == 0 {
		return nil
	}
	f.wbufs = append(f.wbufs, data)
	pad := Padded(len(data)) - len(data)
	if pad > 0 {
		f.wbufs = append(f.wbufs, zeroPad[:pad])
	}
	if f.dataDigest {
		crc := crc32.Update(crc32.Checksum(data, castagnoli), castagnoli, zeroPad[:pad])
		start := len(f.hdrs)
		f.hdrs = binary.LittleEndian.AppendUint32(f.hdrs, crc)
		f.wbufs = append(f.wbufs, f.hdrs[start:len(f.hdrs):len(f.hdrs)])
	}
	return nil
}

// flush writes the batch with one writev where possible.
func (f *framer) flush() error {
	bufs := f.wbufs
	_, err := bufs.WriteTo(f.w)
	clear(f.wbufs)
	f.wbufs = f.wbufs[:0]
	f.hdrs = f.hdrs[:0]
	return err
}
