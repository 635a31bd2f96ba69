package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/internal/fsutil"
)

// testVerifier makes a cosignature/v1 key pair the way C2SP
// tlog-cosignature defines it, and a signer of cosignatures with it.
func testVerifier(t *testing.T, name string) (*CosignatureVerifier, func(t uint64, msg []byte) []byte) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key := append([]byte{algCosignatureV1}, pub...)
	vkey := fmt.Sprintf("%s+%08x+%s", name, keyHash(name, key), base64.StdEncoding.EncodeToString(key))
	v, err := NewCosignatureVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	if v.String() != vkey {
		t.Fatalf("String() = %q, want %q", v.String(), vkey)
	}
	return v, func(ts uint64, msg []byte) []byte {
		sig := binary.BigEndian.AppendUint64(nil, ts)
		return append(sig, ed25519.Sign(priv, SignedMessage(ts, msg))...)
	}
}

func TestCosignatureVerifier(t *testing.T) {
	v, sign := testVerifier(t, "w.example/1")
	msg := []byte("origin\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
	sig := sign(1700000000, msg)
	if !v.Verify(msg, sig) {
		t.Fatal("a valid cosignature does not verify")
	}
	bad := []struct {
		name     string
		msg, sig []byte
	}{
		{"other time", msg, append(binary.BigEndian.AppendUint64(nil, 1700000001), sig[8:]...)},
		{"other checkpoint", []byte("origin\n4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"), sig},
		{"short", msg, sig[:70]},
		{"not a checkpoint", []byte("hello\n"), sign(1, []byte("hello\n"))},
	}
	for _, c := range bad {
		if v.Verify(c.msg, c.sig) {
			t.Errorf("%s: verifies", c.name)
		}
	}
	// The keys x/mod's note refuses, and malformed ones.
	_, ed, _ := note.GenerateKey(rand.Reader, "w.example/1")
	for _, k := range []string{ed, "w+zz+AAAA", "w.example/1+00000000+" + strings.Split(v.String(), "+")[2], "w 1+" + strings.SplitN(v.String(), "+", 2)[1]} {
		if _, err := NewCosignatureVerifier(k); err == nil {
			t.Errorf("NewCosignatureVerifier(%q) accepted", k)
		}
	}
}

// testLog makes an audit log of n run_failed records under a fresh
// directory, signed by a key of a unique origin.
func testLog(t *testing.T, n int) (string, *audit.Log, note.Signer, note.Verifier) {
	t.Helper()
	origin := "audiencematch.test/log-" + hex.EncodeToString(randBytes(6))
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	dir := t.TempDir()
	l, err := audit.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		appendFailed(t, l, s, i)
	}
	return dir, l, s, v
}

func appendFailed(t *testing.T, l *audit.Log, s note.Signer, i int) {
	t.Helper()
	r := &audit.Record{Type: audit.TypeRunFailed, ToolVersion: "test", Destination: "meta-ads", Reason: fmt.Sprintf("failure %d", i)}
	if err := l.Append(r, s, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// liveWitness is the witness scripts/witness.sh started, with the test
// log registered under its origin and key.
func liveWitness(t *testing.T, logVerifier string) Witness {
	t.Helper()
	url := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_URL")
	if url == "" {
		t.Skip("AUDIENCEMATCH_TEST_WITNESS_URL is not set: run eval \"$(scripts/witness.sh start)\" first (scripts/test.sh does)")
	}
	db, ctl := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_DB"), os.Getenv("AUDIENCEMATCH_TEST_WITNESS_CTL")
	origin, _, _ := strings.Cut(logVerifier, "+")
	for _, args := range [][]string{
		{"add-log", "-db", db, "-origin", origin},
		{"add-key", "-db", db, "-origin", origin, "-key", logVerifier},
	} {
		if out, err := exec.Command(ctl, args...).CombinedOutput(); err != nil {
			t.Fatalf("witnessctl %s: %v\n%s", args[0], err, out)
		}
	}
	vkey := os.Getenv("AUDIENCEMATCH_TEST_WITNESS_VKEY")
	v, err := NewCosignatureVerifier(vkey)
	if err != nil {
		t.Fatalf("litewitness's verifier key %q: %v", vkey, err)
	}
	return Witness{Name: v.Name(), URL: url, Key: vkey, verifier: v}
}

func TestCosignWithLitewitness(t *testing.T) {
	origin := "audiencematch.test/log-" + hex.EncodeToString(randBytes(6))
	skey, vkey, _ := note.GenerateKey(rand.Reader, origin)
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	w := liveWitness(t, vkey)
	dir := t.TempDir()
	l, _ := audit.Open(dir)
	for i := range 3 {
		appendFailed(t, l, s, i)
	}
	ctx := context.Background()
	cosign := func() Outcome {
		t.Helper()
		out, err := Cosign(ctx, dir, l, v, []Witness{w}, http.DefaultClient)
		if err != nil {
			t.Fatal(err)
		}
		return out[0]
	}
	// First contact: "old 0".
	if o := cosign(); !o.Cosigned || o.Err != nil {
		t.Fatalf("first checkpoint: %+v", o)
	}
	cp, _ := os.ReadFile(filepath.Join(dir, audit.CheckpointFile))
	got, err := Cosigners(cp, v, []Witness{w})
	if err != nil || got[w.Name] == 0 {
		t.Fatalf("the checkpoint carries no valid cosignature of %s: %v %v\n%s", w.Name, got, err, cp)
	}
	if _, err := audit.ParseCheckpoint(cp, v); err != nil {
		t.Fatalf("the cosigned checkpoint no longer parses as the log's: %v", err)
	}
	if o := cosign(); !o.Already {
		t.Fatalf("a cosigned checkpoint asked again: %+v", o)
	}

	// A grown log: the witness answers 409 with the size it knows, and
	// the client proves consistency from there.
	snapshot := t.TempDir()
	if err := fsutil.CopyDir(dir, snapshot); err != nil {
		t.Fatal(err)
	}
	appendFailed(t, l, s, 3)
	appendFailed(t, l, s, 4)
	if o := cosign(); !o.Cosigned {
		t.Fatalf("grown log: %+v", o)
	}

	// A rollback: the state as it was at 3 records, grown differently to
	// 5. The witness, which cosigned 5 records of the other history,
	// refuses it.
	old, err := audit.Open(snapshot)
	if err != nil {
		t.Fatal(err)
	}
	appendFailed(t, old, s, 30)
	appendFailed(t, old, s, 40)
	out, err := Cosign(ctx, snapshot, old, v, []Witness{w}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	var se *StatusError
	if out[0].Cosigned || !errors.As(out[0].Err, &se) || se.Code != http.StatusUnprocessableEntity {
		t.Fatalf("the witness did not refuse a fork with 422: %+v", out[0])
	}
	cp, _ = os.ReadFile(filepath.Join(snapshot, audit.CheckpointFile))
	if got, _ := Cosigners(cp, v, []Witness{w}); len(got) != 0 {
		t.Fatalf("a refused checkpoint carries cosignatures: %v", got)
	}
	t.Logf("fork refused: %v", out[0].Err)

	// A log shorter than what the witness cosigned (the state restored
	// from a backup of 3 records): refused on the 409 alone.
	back := t.TempDir()
	if err := fsutil.CopyDir(snapshot, back); err != nil {
		t.Fatal(err)
	}
	rolled, err := audit.Open(back)
	if err != nil {
		t.Fatal(err)
	}
	rolled3 := t.TempDir()
	if err := os.WriteFile(filepath.Join(rolled3, audit.RecordsFile), joinLines(rolled, 3), 0o600); err != nil {
		t.Fatal(err)
	}
	l3, _ := audit.Open(rolled3)
	if err := l3.WriteCheckpoint(s); err != nil {
		t.Fatal(err)
	}
	out, err = Cosign(ctx, rolled3, l3, v, []Witness{w}, http.DefaultClient)
	var ce *ConflictError
	if err != nil || out[0].Cosigned || !errors.As(out[0].Err, &ce) || ce.Known != 5 {
		t.Fatalf("a rolled-back log of 3 records: %+v, %v", out, err)
	}
	t.Logf("rollback refused: %v", out[0].Err)
}

func joinLines(l *audit.Log, n int64) []byte {
	var b []byte
	for i := range n {
		b = append(append(b, l.Line(i)...), '\n')
	}
	return b
}

func TestCosignWitnessDown(t *testing.T) {
	dir, l, _, v := testLog(t, 2)
	vw, _ := testVerifier(t, "down.example/w")
	w := Witness{Name: vw.Name(), URL: "http://127.0.0.1:1", Key: vw.String(), verifier: vw}
	before, _ := os.ReadFile(filepath.Join(dir, audit.CheckpointFile))
	out, err := Cosign(context.Background(), dir, l, v, []Witness{w}, http.DefaultClient)
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Cosigned || out[0].Err == nil {
		t.Fatalf("a witness that is down: %+v", out[0])
	}
	after, _ := os.ReadFile(filepath.Join(dir, audit.CheckpointFile))
	if !bytes.Equal(before, after) {
		t.Fatal("the checkpoint changed though no witness cosigned")
	}
}

func TestLoadConfig(t *testing.T) {
	vw, _ := testVerifier(t, "w.example/1")
	state := t.TempDir()
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(state, ConfigFile), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if ws, err := LoadConfig(state); err != nil || ws != nil {
		t.Fatalf("no file: %v %v", ws, err)
	}
	write(fmt.Sprintf("version: %s\nwitnesses:\n  - name: w.example/1\n    url: http://127.0.0.1:7380\n    key: %s\n", ConfigVersion, vw))
	ws, err := LoadConfig(state)
	if err != nil || len(ws) != 1 || ws[0].Verifier().Name() != "w.example/1" {
		t.Fatalf("LoadConfig = %v, %v", ws, err)
	}
	for name, text := range map[string]string{
		"wrong name":  fmt.Sprintf("version: %s\nwitnesses:\n  - name: other\n    url: http://x\n    key: %s\n", ConfigVersion, vw),
		"unknown key": fmt.Sprintf("version: %s\nwitnesses:\n  - name: w.example/1\n    url: http://x\n    key: %s\n    typo: 1\n", ConfigVersion, vw),
		"bad version": "version: v0\nwitnesses: []\n",
		"bad url":     fmt.Sprintf("version: %s\nwitnesses:\n  - name: w.example/1\n    url: ftp://x\n    key: %s\n", ConfigVersion, vw),
	} {
		write(text)
		if _, err := LoadConfig(state); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzCosignatureVerifierKey: a witness key is outside input; no input
// panics, and a key that parses prints back as itself.
func FuzzCosignatureVerifierKey(f *testing.F) {
	f.Add("audiencematch.test/witness+e35f48c2+BAZv1IKDr46WGGcwbM7WqtccyESS0Y95BtpXv2AUQouU")
	f.Add("w+00000000+BA==")
	f.Fuzz(func(t *testing.T, k string) {
		v, err := NewCosignatureVerifier(k)
		if err != nil {
			return
		}
		if v.String() != k {
			t.Fatalf("%q parses but prints as %q", k, v.String())
		}
		v.Verify([]byte(k), []byte(k))
	})
}
