package audit

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// RFC 6962 known answers (section 2.1; values as in the RFC 9162 and
// certificate-transparency test suites).
func TestRFC6962KnownAnswers(t *testing.T) {
	empty, err := tlog.TreeHash(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, got, want string }{
		{"empty tree", hexHash(empty), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"empty leaf", hexHash(tlog.RecordHash(nil)), "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"},
		{"leaf L123456", hexHash(tlog.RecordHash([]byte("L123456"))), "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"},
		{"node N123+N456", hexHash(tlog.NodeHash(tlog.Hash([]byte("N123"+strings.Repeat("\x00", 28))), tlog.Hash([]byte("N456"+strings.Repeat("\x00", 28))))),
			hex.EncodeToString(rfc6962.DefaultHasher.HashChildren([]byte("N123"+strings.Repeat("\x00", 28)), []byte("N456"+strings.Repeat("\x00", 28))))},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: got %s, want %s", c.name, c.got, c.want)
		}
	}
}

// TestProofsCrossChecked: our trees' roots and tlog's proofs verify with
// transparency-dev/merkle, an independent implementation.
func TestProofsCrossChecked(t *testing.T) {
	h := rfc6962.DefaultHasher
	tree := &MerkleTree{}
	var leaves [][]byte
	for n := int64(1); n <= 70; n++ {
		leaf := []byte(fmt.Sprintf("leaf %d", n))
		leaves = append(leaves, leaf)
		if err := tree.Append(leaf); err != nil {
			t.Fatal(err)
		}
		root, _ := tree.Root(n)
		for i := int64(0); i < n; i++ {
			p, err := tree.Prove(i, n)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(h, uint64(i), uint64(n), h.HashLeaf(leaves[i]), hashes(p), root[:]); err != nil {
				t.Fatalf("inclusion of %d in %d: %v", i, n, err)
			}
		}
		for m := int64(1); m <= n; m++ {
			p, err := tlog.ProveTree(n, m, tree)
			if err != nil {
				t.Fatal(err)
			}
			old, _ := tree.Root(m)
			if err := proof.VerifyConsistency(h, uint64(m), uint64(n), hashes(p), old[:], root[:]); err != nil {
				t.Fatalf("consistency %d -> %d: %v", m, n, err)
			}
		}
	}
}

func hexHash(h tlog.Hash) string { return hex.EncodeToString(h[:]) }

func hashes[T ~[]tlog.Hash](p T) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out
}

// proveMembership finds x among sorted leaves held in memory.
func proveMembership(leaves [][]byte, x []byte) (*Membership, error) {
	mp := NewMembershipProver(int64(len(leaves)), x)
	for _, l := range leaves {
		if err := mp.Add(l); err != nil {
			return nil, err
		}
	}
	return mp.Finish()
}

func TestMembership(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 16} {
		tree := &MerkleTree{}
		var leaves [][]byte
		for i := 0; i < n; i++ {
			leaf := []byte(fmt.Sprintf("k%03d", 2*i+1)) // odd numbers; even ones are absent
			leaves = append(leaves, leaf)
			tree.Append(leaf)
		}
		root, _ := tree.Root(int64(n))
		for x := 0; x <= 2*n+1; x++ {
			v := []byte(fmt.Sprintf("k%03d", x))
			m, err := proveMembership(leaves, v)
			if err != nil {
				t.Fatal(err)
			}
			if m.Present != (x%2 == 1 && x < 2*n) {
				t.Fatalf("n=%d x=%d: present=%v", n, x, m.Present)
			}
			if err := m.Check(v, int64(n), root); err != nil {
				t.Fatalf("n=%d x=%d: %v", n, x, err)
			}
			// A proof for one value does not pass for another.
			other := []byte(fmt.Sprintf("k%03d", x+2))
			if x+2 <= 2*n-1 && m.Check(other, int64(n), root) == nil && !m.Present {
				if !(m.Right != nil && bytes.Compare(other, m.Right.Leaf) < 0) {
					t.Fatalf("n=%d: absence proof of %s accepted for %s", n, v, other)
				}
			}
			if m.Present && m.Check([]byte("zzz"), int64(n), root) == nil {
				t.Fatalf("inclusion proof accepted for another leaf")
			}
		}
	}
	// Leaves out of order, or fewer than the tree's, prove nothing.
	if _, err := proveMembership([][]byte{[]byte("b"), []byte("a")}, []byte("a")); err == nil {
		t.Error("unsorted leaves accepted")
	}
	short := NewMembershipProver(3, []byte("b"))
	short.Add([]byte("a"))
	if _, err := short.Finish(); err == nil {
		t.Error("a proof over fewer leaves than the tree's")
	}
	// A forged absence: claiming neighbours that are not adjacent.
	tree := &MerkleTree{}
	leaves := [][]byte{[]byte("a"), []byte("c"), []byte("e")}
	for _, l := range leaves {
		tree.Append(l)
	}
	root, _ := tree.Root(3)
	p0, _ := tree.Prove(0, 3)
	p2, _ := tree.Prove(2, 3)
	forged := &Membership{Left: &Neighbor{0, leaves[0], p0}, Right: &Neighbor{2, leaves[2], p2}}
	if forged.Check([]byte("c"), 3, root) == nil {
		t.Error("absence of a present leaf accepted with non-adjacent neighbours")
	}
}

func newSigner(t testing.TB) (note.Signer, note.Verifier) {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, DefaultOrigin)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	v, _ := note.NewVerifier(vkey)
	return s, v
}

func testRecord(i int) *Record {
	return &Record{Type: TypeRunFailed, ToolVersion: "test", Destination: "meta-ads", Reason: fmt.Sprintf("failure %d", i)}
}

func appendN(t *testing.T, dir string, s note.Signer, n int) *Log {
	t.Helper()
	l, err := OpenForAppend(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := l.Append(testRecord(i), s, time.Date(2026, 11, 1, 0, 0, i, 0, time.UTC)); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func TestCheckpointParsesWithFormats(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	l := appendN(t, dir, s, 3)
	b, _ := os.ReadFile(filepath.Join(dir, CheckpointFile))
	cp, _, _, err := log.ParseCheckpoint(b, DefaultOrigin, v)
	if err != nil {
		t.Fatalf("formats/log cannot parse our checkpoint: %v\n%s", err, b)
	}
	root, _ := l.Root(3)
	if cp.Size != 3 || !bytes.Equal(cp.Hash, root[:]) || cp.Origin != DefaultOrigin {
		t.Errorf("checkpoint %+v, want size 3 root %x", cp, root)
	}
	if _, _, err := VerifyLog(dir, v, nil); err != nil {
		t.Fatal(err)
	}
	_, other := newSigner(t)
	if _, _, err := VerifyLog(dir, other, nil); err == nil {
		t.Error("checkpoint verified with another key")
	}
}

func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, f := range []string{RecordsFile, CheckpointFile} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, f), b, 0o600)
	}
	return dst
}

// TestTamperEveryByte: flipping any single byte of any log file fails.
func TestTamperEveryByte(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	appendN(t, dir, s, 4)
	for _, f := range []string{RecordsFile, CheckpointFile} {
		orig, _ := os.ReadFile(filepath.Join(dir, f))
		for i := range orig {
			b := bytes.Clone(orig)
			b[i] ^= 0x01
			os.WriteFile(filepath.Join(dir, f), b, 0o600)
			if _, _, err := VerifyLog(dir, v, nil); err == nil {
				t.Fatalf("%s: flipping byte %d (%q) went unnoticed", f, i, orig[i])
			}
		}
		os.WriteFile(filepath.Join(dir, f), orig, 0o600)
	}
	if _, _, err := VerifyLog(dir, v, nil); err != nil {
		t.Fatalf("restored log fails: %v", err)
	}
}

func TestTruncationRollbackFork(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	appendN(t, dir, s, 2)
	early := copyTree(t, dir)
	earlyCP, _ := os.ReadFile(filepath.Join(dir, CheckpointFile))
	appendN(t, dir, s, 2)
	saved, _ := os.ReadFile(filepath.Join(dir, CheckpointFile))
	if _, _, err := VerifyLog(dir, v, earlyCP); err != nil {
		t.Fatalf("a grown log fails against an earlier checkpoint: %v", err)
	}

	// Truncated: the last record cut off.
	trunc := copyTree(t, dir)
	b, _ := os.ReadFile(filepath.Join(trunc, RecordsFile))
	lines := bytes.SplitAfter(b, []byte("\n"))
	os.WriteFile(filepath.Join(trunc, RecordsFile), bytes.Join(lines[:len(lines)-2], nil), 0o600)
	if _, _, err := VerifyLog(trunc, v, nil); err == nil || !strings.Contains(err.Error(), "covers 4") {
		t.Errorf("truncated log: %v", err)
	}
	os.WriteFile(filepath.Join(trunc, RecordsFile), b[:len(b)-5], 0o600)
	if _, _, err := VerifyLog(trunc, v, nil); err == nil {
		t.Error("torn last record accepted")
	}

	// Rolled back: the operator restores the log and checkpoint of size 2.
	if _, _, err := VerifyLog(early, v, nil); err != nil {
		t.Fatalf("the early copy alone verifies: %v", err)
	}
	if _, _, err := VerifyLog(early, v, saved); err == nil || !strings.Contains(err.Error(), "rollback") {
		t.Errorf("rollback: %v", err)
	}

	// Forked: history rewritten from record 2 on and re-signed with the real key.
	fork := t.TempDir()
	os.WriteFile(filepath.Join(fork, RecordsFile), mustRead(t, filepath.Join(early, RecordsFile)), 0o600)
	l, _ := OpenForAppend(fork)
	for i := 0; i < 2; i++ {
		l.Append(testRecord(100+i), s, time.Now())
	}
	if _, _, err := VerifyLog(fork, v, nil); err != nil {
		t.Fatalf("the fork is self-consistent, as a careful forger's would be: %v", err)
	}
	if _, _, err := VerifyLog(fork, v, saved); err == nil || !strings.Contains(err.Error(), "fork") {
		t.Errorf("fork of the same size: %v", err)
	}
	l.Append(testRecord(200), s, time.Now())
	if _, _, err := VerifyLog(fork, v, saved); err == nil || !strings.Contains(err.Error(), "history rewritten") {
		t.Errorf("rewritten history, larger: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOpenForAppendRepairsTornWrite(t *testing.T) {
	s, v := newSigner(t)
	dir := t.TempDir()
	appendN(t, dir, s, 2)
	f, _ := os.OpenFile(filepath.Join(dir, RecordsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"v":"audiencematch.audit/v1","type":"run_fa`) // died mid-write
	f.Close()
	if _, err := Open(dir); err == nil {
		t.Fatal("Open accepted a torn record")
	}
	l := appendN(t, dir, s, 1)
	if l.Size() != 3 {
		t.Fatalf("size %d after repair and append, want 3", l.Size())
	}
	if _, _, err := VerifyLog(dir, v, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRecordCanonical(t *testing.T) {
	r := testRecord(1)
	r.Version, r.Time = RecordVersion, "2026-11-01T00:00:00Z"
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(`{"v":"audiencematch.audit/v2",`)) {
		t.Errorf("record does not start with its version: %s", b)
	}
	if _, err := ParseRecord(b); err != nil {
		t.Fatal(err)
	}
	// A v1 record of the same content still reads: readers keep reading v1.
	v1 := strings.Replace(string(b), `audit/v2`, `audit/v1`, 1)
	if _, err := ParseRecord([]byte(v1)); err != nil {
		t.Errorf("a v1 record no longer reads: %v", err)
	}
	for _, bad := range []string{
		strings.Replace(string(b), `"type"`, ` "type"`, 1),                                                            // white space
		strings.Replace(string(b), `{"v"`, `{"zz":1,"v"`, 1),                                                          // unknown field
		strings.Replace(string(b), `audit/v2`, `audit/v3`, 1),                                                         // unknown version
		strings.Replace(string(b), `run_failed`, `run_deleted`, 1),                                                    // unknown type
		strings.Replace(string(b), `,"reason":"failure 1"`, ``, 1),                                                    // missing reason
		strings.Replace(string(b), `"v":"audiencematch.audit/v2",`, ``, 1),                                            // no version
		strings.Replace(string(b), `"type":"run_failed"`, `"type":"prune"`, 1),                                        // a prune without its fields
		strings.Replace(v1, `"reason":"failure 1"`, `"reason":"failure 1","pruned_runs":["r"],"retention_days":3`, 1), // v2 fields in v1
		string(b) + "{}",
	} {
		if _, err := ParseRecord([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// FuzzParseRecord: no panic, and whatever parses re-encodes to itself.
func FuzzParseRecord(f *testing.F) {
	r := testRecord(1)
	r.Version, r.Time = RecordVersion, "2026-11-01T00:00:00Z"
	b, _ := r.Marshal()
	f.Add(b)
	f.Add([]byte(`{"v":"audiencematch.audit/v1","type":"run_committed"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := ParseRecord(line)
		if err != nil {
			return
		}
		again, err := r.Marshal()
		if err != nil || !bytes.Equal(again, line) {
			t.Fatalf("parsed %q but re-encodes to %q (%v)", line, again, err)
		}
	})
}

// summary is full's size and root, as records carry them.
func summary(t *testing.T, full *MerkleTree) *Tree {
	t.Helper()
	h, err := full.Root(full.Size())
	if err != nil {
		t.Fatal(err)
	}
	return &Tree{Size: full.Size(), Root: hexHash(h)}
}

// TestTreeRootMatchesMerkleTree: the streaming root is the stored tree's at
// every size, including the empty tree.
func TestTreeRootMatchesMerkleTree(t *testing.T) {
	full := &MerkleTree{}
	var stream TreeRoot
	for n := 0; n <= 300; n++ {
		want := summary(t, full)
		if got := stream.Summary(); *got != *want {
			t.Fatalf("size %d: streaming root %+v, stored tree %+v", n, got, want)
		}
		leaf := []byte{byte(n), byte(n >> 8), 'x'}
		if err := full.Append(leaf); err != nil {
			t.Fatal(err)
		}
		stream.Append(leaf)
	}
}

// TestProverMatchesMerkleTree: proofs built while leaves stream by are
// the stored tree's, for every leaf of every size up to 70 and for sets of
// leaves marked together (neighbors, the ends, random ones) in larger
// trees; a leaf not marked, or a tree not complete, has no proof.
func TestProverMatchesMerkleTree(t *testing.T) {
	leaf := func(i int64) []byte { return []byte(fmt.Sprintf("leaf-%d", i)) }
	check := func(n int64, marked []int64) {
		t.Helper()
		full := &MerkleTree{}
		p := NewProver(n)
		isMarked := map[int64]bool{}
		for _, i := range marked {
			isMarked[i] = true
		}
		for i := range n {
			if isMarked[i] {
				if err := p.Mark(); err != nil {
					t.Fatalf("size %d, mark %d: %v", n, i, err)
				}
			}
			p.Append(leaf(i))
			if err := full.Append(leaf(i)); err != nil {
				t.Fatal(err)
			}
		}
		want := summary(t, full)
		if got := p.root.Summary(); *got != *want {
			t.Fatalf("size %d: root %+v, want %+v", n, got, want)
		}
		for _, i := range marked {
			got, err := p.Prove(i)
			if err != nil {
				t.Fatalf("size %d, leaf %d: %v", n, i, err)
			}
			wantProof, _ := full.Prove(i, n)
			if !slices.Equal(got, wantProof) {
				t.Fatalf("size %d, leaf %d: proof differs from the stored tree's", n, i)
			}
		}
	}
	for n := int64(1); n <= 70; n++ {
		for i := range n {
			check(n, []int64{i})
		}
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	for _, n := range []int64{1000, 1024, 1025, 4097} {
		check(n, []int64{0, n - 1})
		for range 20 {
			i := rng.Int64N(n - 1)
			check(n, []int64{i, i + 1})
			check(n, []int64{rng.Int64N(n), rng.Int64N(n), rng.Int64N(n)})
		}
	}

	p := NewProver(10)
	for i := range int64(10) {
		if i == 3 {
			p.Mark()
		}
		if _, err := p.Prove(3); err == nil && i < 9 {
			t.Fatal("a proof before the tree is complete")
		}
		p.Append(leaf(i))
	}
	if _, err := p.Prove(3); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Prove(6); err == nil {
		t.Error("a proof of a leaf never marked")
	}
	if err := NewProver(0).Mark(); err == nil {
		t.Error("a mark beyond the tree's size")
	}
}
