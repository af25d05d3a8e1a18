// Package scsitest builds SCSI parameter data for tests, independently of
// the scsi package's own encoders, so that a test checks the device server
// against the standard's layout rather than against itself.
package scsitest

import (
	"encoding/binary"
	"slices"
)

// PROutBasicLen is the length of the PERSISTENT RESERVE OUT basic
// parameter list (SPC-4 6.16.3).
const PROutBasicLen = 24

// PROutParams is a PERSISTENT RESERVE OUT basic parameter list with
// reservation key rk, service action reservation key sark and the flags of
// byte 20, followed, when tids are given, by their length and the
// TransportIDs (SPEC_I_PT).
func PROutParams(rk, sark uint64, flags byte, tids ...[]byte) []byte {
	b := make([]byte, PROutBasicLen)
	binary.BigEndian.PutUint64(b, rk)
	binary.BigEndian.PutUint64(b[8:], sark)
	b[20] = flags
	if len(tids) == 0 {
		return b
	}
	all := slices.Concat(tids...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(all)))
	return append(b, all...)
}
