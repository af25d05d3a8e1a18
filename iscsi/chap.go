package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"
	"strings"
)

// chapAlgs are the CHAP_A values the target accepts, as LIO and open-iscsi
// number them.
var chapAlgs = map[string]func() hash.Hash{
	"5": md5.New,
	"6": sha1.New,
	"7": sha256.New,
	"8": func() hash.Hash { return sha3.New256() },
}

// chapState is the target side of one CHAP exchange.
type chapState struct {
	secret    *CHAPSecret
	alg       string
	id        byte
	challenge []byte
	step      int // 0: want CHAP_A; 1: want CHAP_N/CHAP_R; 2: done
}

// chapAlgorithm picks the first algorithm of the initiator's list that the
// target supports and issues the challenge.
func (s *chapState) chapAlgorithm(list string) ([]KV, *LoginError) {
	for _, a := range strings.Split(list, ",") {
		newHash, ok := chapAlgs[a]
		if !ok {
			continue
		}
		s.alg = a
		var idb [1]byte
		if _, err := rand.Read(idb[:]); err != nil {
			return nil, loginErr(LoginTargetError, "random CHAP identifier: %v", err)
		}
		s.id = idb[0]
		s.challenge = make([]byte, max(16, newHash().Size()))
		if _, err := rand.Read(s.challenge); err != nil {
			return nil, loginErr(LoginTargetError, "random CHAP challenge: %v", err)
		}
		s.step = 1
		return []KV{{"CHAP_A", a}, {"CHAP_I", strconv.Itoa(int(s.id))},
			{"CHAP_C", "0x" + hex.EncodeToString(s.challenge)}}, nil
	}
	return nil, loginErr(LoginAuthFailure, "no CHAP algorithm in common: initiator offered CHAP_A=%s, target supports 5,6,7,8", truncate(list))
}

// chapResponse checks the initiator's CHAP_N/CHAP_R and, for mutual CHAP,
// answers its challenge.
func (s *chapState) chapResponse(kv map[string]string) ([]KV, *LoginError) {
	name, resp := kv["CHAP_N"], kv["CHAP_R"]
	if name == "" || resp == "" {
		return nil, loginErr(LoginAuthFailure, "CHAP_N and CHAP_R missing")
	}
	if subtle.ConstantTimeCompare([]byte(name), []byte(s.secret.User)) != 1 {
		return nil, loginErr(LoginAuthFailure, "CHAP user name %q is not the configured one", truncate(name))
	}
	got, err := decodeCHAPValue(resp)
	if err != nil {
		return nil, loginErr(LoginAuthFailure, "CHAP_R: %v", err)
	}
	want := chapDigest(chapAlgs[s.alg], s.id, s.secret.Secret, s.challenge)
	if subtle.ConstantTimeCompare(got, want) != 1 {
		return nil, loginErr(LoginAuthFailure, "CHAP response does not match the secret")
	}
	s.step = 2
	ci, cc := kv["CHAP_I"], kv["CHAP_C"]
	if ci == "" && cc == "" {
		if s.secret.MutualSecret != "" {
			return nil, loginErr(LoginAuthFailure, "mutual CHAP is configured but the initiator did not challenge the target")
		}
		return nil, nil
	}
	if s.secret.MutualSecret == "" {
		return nil, loginErr(LoginAuthFailure, "initiator asks for mutual CHAP, which is not configured for it")
	}
	id, err := strconv.ParseUint(ci, 0, 8)
	if err != nil {
		return nil, loginErr(LoginAuthFailure, "CHAP_I %q is not 0-255", truncate(ci))
	}
	chal, err := decodeCHAPValue(cc)
	if err != nil || len(chal) == 0 {
		return nil, loginErr(LoginAuthFailure, "CHAP_C is not a hex or base64 value")
	}
	if subtle.ConstantTimeCompare(chal, s.challenge) == 1 {
		return nil, loginErr(LoginAuthFailure, "initiator reflected the target's own CHAP challenge")
	}
	r := chapDigest(chapAlgs[s.alg], byte(id), s.secret.MutualSecret, chal)
	return []KV{{"CHAP_N", s.secret.MutualUser}, {"CHAP_R", "0x" + hex.EncodeToString(r)}}, nil
}

// chapDigest is H(id || secret || challenge) (RFC 1994).
func chapDigest(newHash func() hash.Hash, id byte, secret string, challenge []byte) []byte {
	h := newHash()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPValue reads a binary value in 0x (hex) or 0b (base64) form.
func decodeCHAPValue(v string) ([]byte, error) {
	switch {
	case strings.HasPrefix(v, "0x") || strings.HasPrefix(v, "0X"):
		return hex.DecodeString(v[2:])
	case strings.HasPrefix(v, "0b") || strings.HasPrefix(v, "0B"):
		return base64.StdEncoding.DecodeString(v[2:])
	}
	return nil, fmt.Errorf("value must start with 0x (hex) or 0b (base64)")
}
