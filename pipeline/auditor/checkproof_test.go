package auditor_test

import (
	"bytes"
	"os"
	"testing"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/auditor"
)

// TestCheckProofKnownAnswer: the proof of the worked example
// (docs/AUDITORS.md, "The proof"), as audit subject --json printed it.
func TestCheckProofKnownAnswer(t *testing.T) {
	b, err := os.ReadFile("testdata/proof-u1.json")
	if err != nil {
		t.Fatal(err)
	}
	v, err := audit.LoadVerifier(exVerifier)
	if err != nil {
		t.Fatal(err)
	}
	s, err := auditor.CheckProof(b, v, auditor.CheckProofOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Runs) != 1 || s.Runs[0].Status != "exported" || s.Runs[0].EvidenceRows != 1 || s.Runs[0].Authorization.Organization != "Parent Co" {
		t.Errorf("summary %+v", s.Runs)
	}
	// Trusting its own checkpoint holds; a checkpoint of another log does not parse.
	if _, err := auditor.CheckProof(b, v, auditor.CheckProofOptions{Trusted: []byte(exCheckpoint)}); err != nil {
		t.Errorf("trusted: its own checkpoint: %v", err)
	}
	if _, err := auditor.CheckProof(b, v, auditor.CheckProofOptions{Trusted: []byte("x\n")}); err == nil {
		t.Error("trusted: garbage accepted")
	}
}

// FuzzCheckProof: a proof is outside input; no input panics, and what
// checks is the known proof or differs from it only where JSON allows.
func FuzzCheckProof(f *testing.F) {
	b, err := os.ReadFile("testdata/proof-u1.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"v":"audiencematch.proof/v1","runs":[null]}`))
	f.Add([]byte(`{"v":"audiencematch.proof/v1","checkpoint":"` + "audiencematch.audit/v1\\n0\\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\\n" + `","records":[],"runs":[]}`))
	v, err := audit.LoadVerifier(exVerifier)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := auditor.CheckProof(in, v, auditor.CheckProofOptions{Trusted: []byte(exCheckpoint)})
		if err == nil && (s.LogSize != 1 || !bytes.Contains(in, []byte("Wp9Vn5WER"))) {
			t.Fatalf("a proof of another log checked: %+v", s)
		}
	})
}
