package iscsi_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// ident is the identity of a first normal Login Request.
func ident() []iscsi.KV { return kv("InitiatorName", testInitiator, "TargetName", testTarget) }

// opStep is an operational stage request straight to full feature phase.
func opStep(kvs ...iscsi.KV) initiator.LoginStep {
	return initiator.LoginStep{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature, Transit: true, KVs: kvs}
}

// TestNegotiation drives login requests through every kind of key and every
// refusal the login phase has, and checks the status and the answers.
func TestNegotiation(t *testing.T) {
	e := newEnv(t, nil)
	with := func(kvs ...string) []iscsi.KV { return append(ident(), kv(kvs...)...) }
	cases := []struct {
		name       string
		steps      []initiator.LoginStep
		wantStatus iscsi.LoginStatus
		// want holds answers expected among all responses ("" means absent).
		want map[string]string
	}{
		{"digest list first acceptable", []initiator.LoginStep{opStep(with("HeaderDigest", "CRC32C,None", "DataDigest", "None,CRC32C")...)},
			0, map[string]string{"HeaderDigest": "CRC32C", "DataDigest": "None"}},
		{"digest list skips unknown", []initiator.LoginStep{opStep(with("HeaderDigest", "SHA1,CRC32C")...)},
			0, map[string]string{"HeaderDigest": "CRC32C"}},
		{"digest nothing acceptable", []initiator.LoginStep{opStep(with("DataDigest", "SHA1,MD5")...)},
			0, map[string]string{"DataDigest": "Reject"}},
		{"boolean OR", []initiator.LoginStep{opStep(with("InitialR2T", "No", "DataPDUInOrder", "No")...)},
			0, map[string]string{"InitialR2T": "No", "DataPDUInOrder": "Yes"}},
		{"boolean AND", []initiator.LoginStep{opStep(with("ImmediateData", "No", "IFMarker", "Yes")...)},
			0, map[string]string{"ImmediateData": "No", "IFMarker": "No"}},
		{"numeric min", []initiator.LoginStep{opStep(with("MaxBurstLength", "16777215", "FirstBurstLength", "4096",
			"MaxConnections", "8", "ErrorRecoveryLevel", "2", "DefaultTime2Retain", "0")...)},
			0, map[string]string{"MaxBurstLength": "16776192", "FirstBurstLength": "4096", "MaxConnections": "1",
				"ErrorRecoveryLevel": "0", "DefaultTime2Retain": "0"}},
		{"numeric max", []initiator.LoginStep{opStep(with("DefaultTime2Wait", "0")...)},
			0, map[string]string{"DefaultTime2Wait": "2"}},
		{"numeric max above ours", []initiator.LoginStep{opStep(with("DefaultTime2Wait", "3600")...)},
			0, map[string]string{"DefaultTime2Wait": "3600"}},
		{"hexadecimal number", []initiator.LoginStep{opStep(with("MaxBurstLength", "0x1000")...)},
			0, map[string]string{"MaxBurstLength": "4096"}},
		{"declarative MaxRecvDataSegmentLength", []initiator.LoginStep{opStep(with("MaxRecvDataSegmentLength", "512")...)},
			0, map[string]string{"MaxRecvDataSegmentLength": "262144"}},
		{"target declares MaxRecvDataSegmentLength unasked", []initiator.LoginStep{opStep(ident()...)},
			0, map[string]string{"MaxRecvDataSegmentLength": "262144", "TargetPortalGroupTag": "1"}},
		{"iSER key over TCP", []initiator.LoginStep{opStep(with("TargetRecvDataSegmentLength", "8192")...)},
			0, map[string]string{"TargetRecvDataSegmentLength": "Irrelevant"}},
		{"protocol level", []initiator.LoginStep{opStep(with("iSCSIProtocolLevel", "2")...)},
			0, map[string]string{"iSCSIProtocolLevel": "1"}},
		{"unknown key", []initiator.LoginStep{opStep(with("FooBar", "1")...)},
			0, map[string]string{"FooBar": "NotUnderstood"}},
		{"X- extension key", []initiator.LoginStep{opStep(with("X-com.example.Feature", "On")...)},
			0, map[string]string{"X-com.example.Feature": "NotUnderstood"}},
		{"X# public extension key", []initiator.LoginStep{opStep(with("X#ExampleKey", "1")...)},
			0, map[string]string{"X#ExampleKey": "NotUnderstood"}},
		{"security then operational", []initiator.LoginStep{
			{CSG: initiator.StageSecurity, NSG: initiator.StageOperational, Transit: true, KVs: with("AuthMethod", "CHAP,None")},
			opStep(kv("MaxBurstLength", "8192")...)},
			0, map[string]string{"AuthMethod": "None", "MaxBurstLength": "8192"}},
		{"security straight to full feature", []initiator.LoginStep{
			{CSG: initiator.StageSecurity, NSG: initiator.StageFullFeature, Transit: true, KVs: with("AuthMethod", "None")}},
			0, map[string]string{"AuthMethod": "None"}},
		{"operational stage in two requests", []initiator.LoginStep{
			{CSG: initiator.StageOperational, NSG: initiator.StageOperational, KVs: with("MaxBurstLength", "8192")},
			opStep(kv("FirstBurstLength", "4096")...)},
			0, map[string]string{"MaxBurstLength": "8192", "FirstBurstLength": "4096"}},
		{"multi-PDU text with C bit", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, Split: 16, KVs: with("MaxBurstLength", "8192", "FirstBurstLength", "4096", "HeaderDigest", "None",
				"X-com.example.Long", strings.Repeat("v", 100))}},
			0, map[string]string{"MaxBurstLength": "8192", "FirstBurstLength": "4096", "X-com.example.Long": "NotUnderstood"}},

		{"out of range low", []initiator.LoginStep{opStep(with("MaxBurstLength", "511")...)}, iscsi.LoginInitiatorError, nil},
		{"out of range high", []initiator.LoginStep{opStep(with("FirstBurstLength", "16777216")...)}, iscsi.LoginInitiatorError, nil},
		{"MaxConnections zero", []initiator.LoginStep{opStep(with("MaxConnections", "0")...)}, iscsi.LoginInitiatorError, nil},
		{"not a number", []initiator.LoginStep{opStep(with("MaxOutstandingR2T", "many")...)}, iscsi.LoginInitiatorError, nil},
		{"negative number", []initiator.LoginStep{opStep(with("MaxOutstandingR2T", "-1")...)}, iscsi.LoginInitiatorError, nil},
		{"not a boolean", []initiator.LoginStep{opStep(with("InitialR2T", "Maybe")...)}, iscsi.LoginInitiatorError, nil},
		{"key twice in one request", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, Text: iscsi.EncodeText(with("MaxBurstLength", "8192", "MaxBurstLength", "4096"))}},
			iscsi.LoginInitiatorError, nil},
		{"key renegotiated in the same login", []initiator.LoginStep{
			{CSG: initiator.StageOperational, NSG: initiator.StageOperational, KVs: with("MaxBurstLength", "8192")},
			opStep(kv("MaxBurstLength", "4096")...)},
			iscsi.LoginInitiatorError, nil},
		{"target-only key from the initiator", []initiator.LoginStep{opStep(with("TargetAlias", "x")...)}, iscsi.LoginInitiatorError, nil},
		{"malformed text", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, Text: append(iscsi.EncodeText(ident()), "NoEquals\x00"...)}}, iscsi.LoginInitiatorError, nil},
		{"missing InitiatorName", []initiator.LoginStep{opStep(kv("TargetName", testTarget)...)}, iscsi.LoginMissingParameter, nil},
		{"missing TargetName", []initiator.LoginStep{opStep(kv("InitiatorName", testInitiator)...)}, iscsi.LoginMissingParameter, nil},
		{"bad InitiatorName", []initiator.LoginStep{opStep(kv("InitiatorName", "bob", "TargetName", testTarget)...)},
			iscsi.LoginInitiatorError, nil},
		{"unknown target", []initiator.LoginStep{opStep(kv("InitiatorName", testInitiator, "TargetName", "iqn.2026-01.test.iserd:nope")...)},
			iscsi.LoginNotFound, nil},
		{"unknown session type", []initiator.LoginStep{opStep(with("SessionType", "Bulk")...)}, iscsi.LoginSessionTypeUnsupp, nil},
		{"unsupported version", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, VersionMax: 2, VersionMin: 1, KVs: ident()}}, iscsi.LoginUnsupportedVersion, nil},
		{"T and C both set", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageFullFeature,
			Transit: true, Continue: true, KVs: ident()}}, iscsi.LoginInitiatorError, nil},
		{"transit to the same stage", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageOperational,
			Transit: true, KVs: ident()}}, iscsi.LoginInitiatorError, nil},
		{"transit backwards", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: initiator.StageSecurity,
			Transit: true, KVs: ident()}}, iscsi.LoginInitiatorError, nil},
		{"reserved stage 2", []initiator.LoginStep{{CSG: 2, NSG: initiator.StageFullFeature, Transit: true, KVs: ident()}},
			iscsi.LoginInitiatorError, nil},
		{"transit to reserved stage 2", []initiator.LoginStep{{CSG: initiator.StageOperational, NSG: 2, Transit: true, KVs: ident()}},
			iscsi.LoginInitiatorError, nil},
		{"stage goes back", []initiator.LoginStep{
			{CSG: initiator.StageOperational, NSG: initiator.StageOperational, KVs: ident()},
			{CSG: initiator.StageSecurity, NSG: initiator.StageOperational, Transit: true, KVs: kv("AuthMethod", "None")}},
			iscsi.LoginInitiatorError, nil},
		{"leave security without AuthMethod", []initiator.LoginStep{
			{CSG: initiator.StageSecurity, NSG: initiator.StageFullFeature, Transit: true, KVs: ident()}},
			iscsi.LoginAuthFailure, nil},
		{"authentication required", []initiator.LoginStep{
			{CSG: initiator.StageSecurity, NSG: initiator.StageOperational, Transit: true, KVs: with("AuthMethod", "CHAP")}},
			iscsi.LoginAuthFailure, nil},
		{"AuthMethod in the operational stage", []initiator.LoginStep{opStep(with("AuthMethod", "None")...)},
			iscsi.LoginInitiatorError, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dial(t)
			got := map[string]string{}
			var r *initiator.LoginResponse
			for i, s := range tc.steps {
				var err error
				r, err = c.LoginStep(s)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if r.Status != 0 {
					if i != len(tc.steps)-1 {
						t.Fatalf("step %d refused with 0x%04x", i, uint16(r.Status))
					}
					break
				}
				for _, a := range r.KVs {
					got[a.Key] = a.Value
				}
			}
			if r.Status != tc.wantStatus {
				t.Fatalf("login status 0x%04x, want 0x%04x (answers %v)", uint16(r.Status), uint16(tc.wantStatus), got)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s answered %q, want %q (all answers %v)", k, got[k], v, got)
				}
			}
			if tc.wantStatus != 0 {
				return
			}
			if !r.Transit || r.NSG != initiator.StageFullFeature || r.TSIH == 0 {
				t.Fatalf("last response T=%v NSG=%d TSIH=%d: not in full feature phase", r.Transit, r.NSG, r.TSIH)
			}
			if _, err := c.Ping(ctxT(t), []byte("after login")); err != nil {
				t.Fatalf("ping after login: %v", err)
			}
		})
	}
}

// TestNegotiatedValuesConsistent checks that what the target answers is
// what it then enforces: an initiator that follows the answers to the
// letter must have its writes accepted.
func TestNegotiatedValuesConsistent(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name string
		keys []iscsi.KV
	}{
		{"FirstBurstLength above MaxBurstLength", kv("MaxBurstLength", "4096", "FirstBurstLength", "65536")},
		{"FirstBurstLength equal to MaxBurstLength", kv("MaxBurstLength", "8192", "FirstBurstLength", "8192")},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := e.dial(t)
			if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: testTarget, Keys: tc.keys}); err != nil {
				if loginStatus(t, err) == iscsi.LoginInitiatorError {
					return // refusing the offer is a valid answer
				}
				t.Fatalf("login: %v", err)
			}
			p := c.Params()
			if p.FirstBurstLength > p.MaxBurstLength {
				t.Errorf("target answered FirstBurstLength=%d above MaxBurstLength=%d", p.FirstBurstLength, p.MaxBurstLength)
			}
			clearUA(t, c)
			data := pattern(64<<10, byte(i))
			writeBlocks(t, c, 0, data)
			checkSame(t, "read-back", readBlocks(t, c, 0, len(data)).Data, data)
		})
	}
}

// TestDiscovery lists the targets over a discovery session and checks that
// normal-session keys are irrelevant there.
func TestDiscovery(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial(t)
	r, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, Discovery: true,
		Keys: kv("MaxBurstLength", "8192", "InitialR2T", "Yes", "HeaderDigest", "None")})
	if err != nil {
		t.Fatal(err)
	}
	answers := map[string]string{}
	for _, a := range r.KVs {
		answers[a.Key] = a.Value
	}
	for k, v := range map[string]string{"MaxBurstLength": "Irrelevant", "InitialR2T": "Irrelevant", "HeaderDigest": "None"} {
		if answers[k] != v {
			t.Errorf("discovery login: %s answered %q, want %q", k, answers[k], v)
		}
	}
	got, err := c.SendTargets(ctxT(t), "All")
	if err != nil {
		t.Fatal(err)
	}
	want := []iscsi.KV{{Key: "TargetName", Value: testTarget}, {Key: "TargetAddress", Value: e.addr + ",1"},
		{Key: "TargetName", Value: otherTarget}, {Key: "TargetAddress", Value: e.addr + ",1"}}
	if len(got) != len(want) {
		t.Fatalf("SendTargets=All answered %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("SendTargets=All pair %d is %v, want %v", i, got[i], want[i])
		}
	}
	one, err := c.SendTargets(ctxT(t), otherTarget)
	if err != nil {
		t.Fatal(err)
	}
	if len(one) != 2 || one[0].Value != otherTarget {
		t.Errorf("SendTargets=%s answered %v", otherTarget, one)
	}
	if _, err := c.Do(ctxT(t), &initiator.Command{CDB: make([]byte, 6)}); err == nil {
		t.Error("a SCSI command in a discovery session was not rejected")
	}
	if code, err := c.Logout(ctxT(t), initiator.LogoutSession); err != nil || code != 0 {
		t.Errorf("logout: code %d, %v", code, err)
	}
}

// TestTextContinuation lists more targets than one Text Response can hold
// at MaxRecvDataSegmentLength=512: the answer comes in several PDUs.
func TestTextContinuation(t *testing.T) {
	e := newEnv(t, nil)
	want := []string{testTarget, otherTarget}
	for i := range 40 {
		name := fmt.Sprintf("iqn.2026-01.test.iserd:extra-%02d-%s", i, strings.Repeat("x", 20))
		addTarget(t, e.srv, name)
		want = append(want, name)
	}
	slices.Sort(want)
	c := e.dial(t)
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, Discovery: true,
		Keys: kv("MaxRecvDataSegmentLength", "512")}); err != nil {
		t.Fatal(err)
	}
	kvs, err := c.SendTargets(ctxT(t), "All")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range kvs {
		if a.Key == "TargetName" {
			got = append(got, a.Value)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("SendTargets=All over several PDUs listed %d targets %v, want %d", len(got), got, len(want))
	}
}

// TestLoginResponseStages pins that a response names the stage the
// initiator is leaving (CSG) and the one it enters (NSG); open-iscsi drops a
// login whose response CSG differs from its request's.
func TestLoginResponseStages(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial(t)
	steps := []struct {
		csg, nsg int
		keys     []iscsi.KV
	}{
		{0, 1, kv("InitiatorName", testInitiator, "TargetName", testTarget, "SessionType", "Normal", "AuthMethod", "None")},
		{1, 3, kv("HeaderDigest", "None")},
	}
	for _, s := range steps {
		r, err := c.LoginStep(initiator.LoginStep{CSG: s.csg, NSG: s.nsg, Transit: true, KVs: s.keys})
		if err != nil {
			t.Fatalf("login step %d->%d: %v", s.csg, s.nsg, err)
		}
		if r.CSG != s.csg || r.NSG != s.nsg || !r.Transit {
			t.Errorf("request %d->%d answered CSG %d NSG %d transit %v", s.csg, s.nsg, r.CSG, r.NSG, r.Transit)
		}
	}
}

func TestValidTextValue(t *testing.T) {
	for _, c := range []struct {
		v    string
		want string // part of the error; "" for none
	}{
		{"", ""},
		{"disk of the lab — ünicode", ""},
		{strings.Repeat("a", 255), ""},
		{strings.Repeat("a", 256), "more than the 255"},
		{"a\x00TargetAlias=b", "NUL"},
		{"bad \xff utf-8", "UTF-8"},
	} {
		err := iscsi.ValidTextValue(c.v)
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("ValidTextValue(%q) = %v, want an error with %q", c.v, err, c.want)
		}
	}
}
