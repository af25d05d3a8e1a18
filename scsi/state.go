package scsi

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// A state file of a logical unit (persistent reservations with APTPL, a
// sanitize operation in progress or failed): a magic line naming its kind,
// the payload length, the JSON payload and its CRC-32C. A file that does
// not check out is reported, never used.
const (
	prMagic       = "iserd-pr-state-1\n"
	sanitizeMagic = "iserd-sanitize-state-1\n"
	stateMaxBytes = 8 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// prPath is where the logical unit keeps its APTPL state.
func (d *Disk) prPath() string {
	return filepath.Join(d.cfg.StateDir, fmt.Sprintf("pr-%015x.state", d.cfg.NAA))
}

// savePR persists s when APTPL is set, and removes the file once it is
// cleared. The caller holds d.prMu.
func (d *Disk) savePR(s *prState) error {
	if d.cfg.StateDir == "" {
		return nil
	}
	path := d.prPath()
	if !s.APTPL {
		if !d.prSaved {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove reservation state: %w", err)
		}
		d.prSaved = false
		return syncDir(filepath.Dir(path))
	}
	b, err := encodeState(prMagic, s)
	if err != nil {
		return fmt.Errorf("encode reservation state: %w", err)
	}
	if err := writeFileAtomic(path, b); err != nil {
		return err
	}
	d.prSaved = true
	return nil
}

// encodeState frames v as a state file of the kind magic names.
func encodeState(magic string, v any) ([]byte, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return frameState(magic, payload), nil
}

// frameState wraps a JSON payload in the magic line, length and checksum
// of a state file.
func frameState(magic string, payload []byte) []byte {
	b := make([]byte, 0, len(magic)+4+len(payload)+4)
	b = append(b, magic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(payload, castagnoli))
}

// decodeState checks the framing of a state file of the kind magic names
// and decodes its payload into v.
func decodeState(b []byte, magic string, v any) error {
	if !bytes.HasPrefix(b, []byte(magic)) {
		return fmt.Errorf("not a %s file", strings.TrimSpace(magic))
	}
	b = b[len(magic):]
	if len(b) < 8 {
		return errors.New("truncated")
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > stateMaxBytes || len(b) != 4+n+4 {
		return fmt.Errorf("torn: %d bytes for a %d-byte payload", len(b)-8, n)
	}
	payload := b[4 : 4+n]
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(b[4+n:]) {
		return errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// loadPR reads the APTPL state of the logical unit; nil when there is none
// (or when a PRStore keeps it).
func (d *Disk) loadPR() (*prState, error) {
	if d.cfg.StateDir == "" || d.cfg.PRStore != nil {
		return nil, nil
	}
	path := d.prPath()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read reservation state: %w", err)
	}
	s, err := decodePR(b)
	if err != nil {
		return nil, fmt.Errorf("reservation state %s: %w", path, err)
	}
	d.prSaved = true
	return s, nil
}

// decodePR checks and decodes a state file.
func decodePR(b []byte) (*prState, error) {
	var s prState
	if err := decodeState(b, prMagic, &s); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// validate checks the invariants a restored state must satisfy.
func (p *prState) validate() error {
	if len(p.Regs) > maxPRRegs {
		return fmt.Errorf("%d registrations, at most %d", len(p.Regs), maxPRRegs)
	}
	ids := make(map[uint64]bool, len(p.Regs))
	for _, r := range p.Regs {
		if !r.valid() || r.ID > p.NextID || ids[r.ID] {
			return fmt.Errorf("invalid registration %+v", r)
		}
		ids[r.ID] = true
	}
	if p.Type != 0 && (!validType(p.Type) || len(p.Regs) == 0 || !p.allRegistrants() && !ids[p.Holder]) {
		return fmt.Errorf("invalid reservation type %d holder %d", p.Type, p.Holder)
	}
	return nil
}

// valid reports whether r could have been made by PR OUT: a key, a name a
// TransportID carries, an ID.
func (r *registration) valid() bool {
	return r.Key != 0 && r.Name != "" && r.ID != 0 && r.reportable()
}

// writeFileAtomic replaces path with data: write a temporary file, fsync
// it, rename it over path and fsync the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write state %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync state directory %s: %w", dir, err)
	}
	return nil
}
