package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	mrand "math/rand/v2"
	"slices"
	"testing"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/tlog"
)

// stackRoot folds RFC 6962 section 2.1's tree hash over a stack of perfect
// subtrees, largest first, as TreeRoot did before it was built on
// compact.Range: an oracle sharing no code with compact or with tlog's
// stored hashes, which keeps the roots of records already written and of
// records to come byte-identical.
type stackRoot struct {
	stack []tlog.Hash
	n     int64
}

func (t *stackRoot) appendLeafHash(h tlog.Hash) {
	for k := t.n; k&1 == 1; k >>= 1 {
		h = tlog.NodeHash(t.stack[len(t.stack)-1], h)
		t.stack = t.stack[:len(t.stack)-1]
	}
	t.stack = append(t.stack, h)
	t.n++
}

func (t *stackRoot) summary() *Tree {
	h, _ := tlog.TreeHash(0, nil)
	if len(t.stack) > 0 {
		h = t.stack[len(t.stack)-1]
		for i := len(t.stack) - 2; i >= 0; i-- {
			h = tlog.NodeHash(t.stack[i], h)
		}
	}
	return &Tree{Size: t.n, Root: hex.EncodeToString(h[:])}
}

// propertyLeaf is leaf i of the trees of seed.
func propertyLeaf(seed uint64, i int64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, seed), uint64(i))
}

// TestTreeProperties: for random sizes 0..2000 (and the sizes around powers
// of two, and one tree large enough to move its hashes between blocks many
// times) and random marked leaves, TreeRoot's root equals the stack fold's
// and tlog.TreeHash's, at the end and at sizes along the way; the Prover's
// proofs equal tlog.ProveRecord's over the stored tree and verify with
// tlog.CheckRecord and with transparency-dev/merkle's proof package.
func TestTreeProperties(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(6962, 9162))
	sizes := []int64{0, 1, 2, 3, 2000, 1<<17 + 3}
	for k := 1; k <= 10; k++ {
		sizes = append(sizes, 1<<k-1, 1<<k, 1<<k+1)
	}
	for range 200 {
		sizes = append(sizes, rng.Int64N(2001))
	}
	for c, n := range sizes {
		seed := uint64(c)
		var marked []int64
		if n > 0 {
			for range rng.IntN(6) {
				marked = append(marked, rng.Int64N(n))
			}
			i := rng.Int64N(n)
			marked = append(marked, i, min(i+1, n-1), 0, n-1)
		}
		slices.Sort(marked)
		marked = slices.Compact(marked)
		checkTree(t, n, seed, marked, n <= 2000 && c%10 == 0)
	}
}

func checkTree(t *testing.T, n int64, seed uint64, marked []int64, everySize bool) {
	t.Helper()
	var (
		tr    TreeRoot
		old   stackRoot
		full  MerkleTree
		p     = NewProver(n)
		marks = map[int64]bool{}
	)
	for _, i := range marked {
		marks[i] = true
	}
	for i := range n {
		if everySize {
			if got, want := tr.Summary(), old.summary(); *got != *want {
				t.Fatalf("size %d of %d: root %s, stack fold %s", i, n, got.Root, want.Root)
			}
		}
		if marks[i] {
			if err := p.Mark(); err != nil {
				t.Fatalf("size %d, mark %d: %v", n, i, err)
			}
		}
		leaf := propertyLeaf(seed, i)
		h := tlog.RecordHash(leaf)
		tr.AppendLeafHash(h)
		old.appendLeafHash(h)
		p.Append(leaf)
		if n <= 2000 {
			if err := full.Append(leaf); err != nil {
				t.Fatal(err)
			}
		}
	}
	got, want := tr.Summary(), old.summary()
	if *got != *want {
		t.Fatalf("size %d: root %s, stack fold %s", n, got.Root, want.Root)
	}
	if pr := p.root.Summary(); *pr != *got {
		t.Fatalf("size %d: the Prover's root %s, TreeRoot's %s", n, pr.Root, got.Root)
	}
	root, err := ParseHash(got.Root)
	if err != nil {
		t.Fatal(err)
	}
	if n > 2000 {
		for _, i := range marked {
			proof, err := p.Prove(i)
			if err != nil {
				t.Fatalf("size %d, leaf %d: %v", n, i, err)
			}
			if err := tlog.CheckRecord(proof, n, root, i, tlog.RecordHash(propertyLeaf(seed, i))); err != nil {
				t.Fatalf("size %d, leaf %d: tlog.CheckRecord: %v", n, i, err)
			}
		}
		return
	}
	th, err := tlog.TreeHash(n, &full)
	if err != nil {
		t.Fatal(err)
	}
	if th != root {
		t.Fatalf("size %d: root %s, tlog.TreeHash %x", n, got.Root, th)
	}
	h := rfc6962.DefaultHasher
	for _, i := range marked {
		got, err := p.Prove(i)
		if err != nil {
			t.Fatalf("size %d, leaf %d: %v", n, i, err)
		}
		want, err := tlog.ProveRecord(n, i, &full)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("size %d, leaf %d: proof differs from tlog.ProveRecord's", n, i)
		}
		leaf := propertyLeaf(seed, i)
		if err := tlog.CheckRecord(got, n, root, i, tlog.RecordHash(leaf)); err != nil {
			t.Fatalf("size %d, leaf %d: tlog.CheckRecord: %v", n, i, err)
		}
		if err := proof.VerifyInclusion(h, uint64(i), uint64(n), h.HashLeaf(leaf), hashes(got), root[:]); err != nil {
			t.Fatalf("size %d, leaf %d: proof.VerifyInclusion: %v", n, i, err)
		}
		if err := tlog.CheckRecord(got, n, root, i, tlog.RecordHash(propertyLeaf(seed+1, i))); err == nil {
			t.Fatalf("size %d, leaf %d: the proof passes for another leaf", n, i)
		}
	}
	for i := range n {
		if !marks[i] {
			if _, err := p.Prove(i); err == nil && !provedByMarks(n, i, marks) {
				t.Fatalf("size %d: a proof of leaf %d, never marked", n, i)
			}
		}
	}
}

// provedByMarks reports whether the hashes kept for the marked leaves
// happen to cover leaf i's proof as well (a leaf's sibling shares it).
func provedByMarks(n, i int64, marks map[int64]bool) bool {
	var need hashRecorder
	tlog.ProveRecord(n, i, &need)
	var all hashRecorder
	for m := range marks {
		tlog.ProveRecord(n, m, &all)
	}
	for _, x := range need {
		if !slices.Contains(all, x) {
			return false
		}
	}
	return true
}

// TestNodeHashIsRFC6962: the compact.HashFn is rfc6962's HashChildren.
func TestNodeHashIsRFC6962(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(1, 6962))
	s := newHashSpace()
	for range 1000 {
		var l, r tlog.Hash
		for i := range l {
			l[i], r[i] = byte(rng.Uint32()), byte(rng.Uint32())
		}
		if got, want := s.nodeHash(l[:], r[:]), rfc6962.DefaultHasher.HashChildren(l[:], r[:]); !bytes.Equal(got, want) {
			t.Fatalf("node hash of %x, %x: got %x, want %x", l, r, got, want)
		}
		if len(s.cur) > cap(s.cur)/2 {
			s.cur = s.cur[:0]
		}
	}
}
