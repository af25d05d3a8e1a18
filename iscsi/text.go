package iscsi

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// KV is one key=value pair of a text or login data segment.
type KV struct{ Key, Value string }

// Limits on text keys (RFC 7143 6.1).
const (
	maxKeyLen   = 63
	maxValueLen = 8192 // generous: lists and CHAP values can be long
	// maxTextLen bounds a multi-PDU text sequence so a peer cannot make the
	// target hold unbounded memory.
	maxTextLen = 64 * 1024
)

// ParseText splits a data segment of NUL-terminated key=value pairs. It
// rejects a key without '=', an empty or over-long or badly spelled key name,
// and a key given twice.
func ParseText(data []byte) ([]KV, error) {
	var kvs []KV
	seen := make(map[string]bool)
	for len(data) > 0 {
		end := bytes.IndexByte(data, 0)
		if end < 0 {
			end = len(data) // tolerate a missing final NUL
		}
		pair := data[:end]
		data = data[min(end+1, len(data)):]
		if len(pair) == 0 {
			if len(bytes.Trim(data, "\x00")) == 0 {
				break // trailing padding
			}
			return nil, fmt.Errorf("empty key=value pair")
		}
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 {
			return nil, fmt.Errorf("text %q has no '='", truncate(string(pair)))
		}
		k, v := string(pair[:eq]), string(pair[eq+1:])
		if err := checkKeyName(k); err != nil {
			return nil, err
		}
		if len(v) > maxValueLen {
			return nil, fmt.Errorf("value of %s is %d bytes, more than %d", k, len(v), maxValueLen)
		}
		if seen[k] {
			return nil, fmt.Errorf("key %s given twice", k)
		}
		seen[k] = true
		kvs = append(kvs, KV{k, v})
	}
	return kvs, nil
}

func checkKeyName(k string) error {
	if k == "" || len(k) > maxKeyLen {
		return fmt.Errorf("key name %q must be 1 to %d characters", truncate(k), maxKeyLen)
	}
	for _, c := range []byte(k) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '+' || c == '@' || c == '_' || c == '#' // '#': X# keys (RFC 7143 13.5.4)
		if !ok {
			return fmt.Errorf("key name %q has a character not allowed in a key", truncate(k))
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// maxSentValueLen is the longest value iserd may send: RFC 7143 6.1 bounds
// an individual value at 255 bytes.
const maxSentValueLen = 255

// ValidTextValue checks a configured string that iserd sends as the value
// of a text key (TargetAlias, the target's CHAP_N): UTF-8 without NUL
// (which ends a key=value pair), at most 255 bytes.
func ValidTextValue(v string) error {
	switch {
	case len(v) > maxSentValueLen:
		return fmt.Errorf("%q is %d bytes, more than the %d an iSCSI text value may hold", truncate(v), len(v), maxSentValueLen)
	case !utf8.ValidString(v):
		return fmt.Errorf("%q is not valid UTF-8", truncate(strings.ToValidUTF8(v, "\ufffd")))
	case strings.IndexByte(v, 0) >= 0:
		return fmt.Errorf("%q contains a NUL byte, which would end the iSCSI text value", truncate(v))
	}
	return nil
}

// EncodeText joins pairs into a data segment.
func EncodeText(kvs []KV) []byte {
	b := make([]byte, 0, textLen(kvs))
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

// textLen is the length of EncodeText(kvs).
func textLen(kvs []KV) int {
	n := 0
	for _, kv := range kvs {
		n += len(kv.Key) + len(kv.Value) + 2
	}
	return n
}
