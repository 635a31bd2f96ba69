package audit

import (
	"encoding/hex"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// MerkleTree is an in-memory RFC 6962 tree built with tlog: it keeps the
// hashes tlog.StoredHashes asks to store, about two per leaf, and answers
// tlog's HashReader for roots and proofs.
type MerkleTree struct {
	hashes []tlog.Hash
	n      int64
}

// NewMerkleTree returns an empty tree with room for leaves leaves.
func NewMerkleTree(leaves int) *MerkleTree {
	return &MerkleTree{hashes: make([]tlog.Hash, 0, 2*leaves)}
}

// Append adds a leaf whose data is b.
func (t *MerkleTree) Append(b []byte) error {
	hs, err := tlog.StoredHashes(t.n, b, t)
	if err != nil {
		return err
	}
	t.hashes = append(t.hashes, hs...)
	t.n++
	return nil
}

// Size is the number of leaves.
func (t *MerkleTree) Size() int64 { return t.n }

// ReadHashes implements tlog.HashReader.
func (t *MerkleTree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(t.hashes)) {
			return nil, fmt.Errorf("hash index %d not stored", x)
		}
		out[i] = t.hashes[x]
	}
	return out, nil
}

// Root is the tree hash at size n (n <= Size).
func (t *MerkleTree) Root(n int64) (tlog.Hash, error) { return tlog.TreeHash(n, t) }

// Summary is the tree's size and root, as records carry it.
func (t *MerkleTree) Summary() (*Tree, error) {
	h, err := t.Root(t.n)
	if err != nil {
		return nil, err
	}
	return &Tree{Size: t.n, Root: hex.EncodeToString(h[:])}, nil
}

// Prove returns the inclusion proof of leaf i in the tree of size n.
func (t *MerkleTree) Prove(i, n int64) (tlog.RecordProof, error) { return tlog.ProveRecord(n, i, t) }

// ParseHash decodes a hex hash.
func ParseHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("malformed hash %q", s)
	}
	copy(h[:], b)
	return h, nil
}

// TreeRoot computes the same root as MerkleTree while leaves stream by,
// keeping only the roots of its complete subtrees (one hash per level), for
// trees too large to hold, such as a run's identifiers.
type TreeRoot struct {
	stack []tlog.Hash // complete subtrees, largest first
	n     int64
}

// Append adds a leaf whose data is b.
func (t *TreeRoot) Append(b []byte) { t.AppendLeafHash(tlog.RecordHash(b)) }

// AppendLeafHash adds a leaf by its hash, tlog.RecordHash of its data: the
// leaves' hashes can be computed elsewhere, in parallel, and only the
// interior nodes here, in order.
func (t *TreeRoot) AppendLeafHash(h tlog.Hash) { t.appendLeafHash(h, nil) }

// appendLeafHash adds a leaf by its hash; seen, if not nil, is called with
// every complete subtree the leaf completes: the leaf itself at level 0,
// then each node merged above it, by level and index within the level.
func (t *TreeRoot) appendLeafHash(h tlog.Hash, seen func(node, tlog.Hash)) {
	if seen != nil {
		seen(node{0, t.n}, h)
	}
	level := 0
	for k := t.n; k&1 == 1; k >>= 1 {
		h = tlog.NodeHash(t.stack[len(t.stack)-1], h)
		t.stack = t.stack[:len(t.stack)-1]
		if level++; seen != nil {
			seen(node{level, k >> 1}, h)
		}
	}
	t.stack = append(t.stack, h)
	t.n++
}

// Summary is the tree's size and root, as records carry it.
func (t *TreeRoot) Summary() *Tree {
	var h tlog.Hash
	if len(t.stack) > 0 {
		h = t.stack[len(t.stack)-1]
		for i := len(t.stack) - 2; i >= 0; i-- {
			h = tlog.NodeHash(t.stack[i], h)
		}
	} else {
		h, _ = tlog.TreeHash(0, (*MerkleTree)(nil))
	}
	return &Tree{Size: t.n, Root: hex.EncodeToString(h[:])}
}

// node is a complete subtree: the 2^level leaves from k<<level on.
type node struct {
	level int
	k     int64
}

// Prover builds inclusion proofs for chosen leaves of a tree of known size
// while its leaves stream by, keeping only the hashes those proofs need
// (about two per level per leaf) instead of the tree: a run's tree of
// millions of leaves is read once, in constant memory. Mark chooses the
// next leaf, before it is appended; Prove answers once every leaf is in.
// Its proofs are tlog's (ProveRecord), the same as MerkleTree.Prove's.
type Prover struct {
	size int64 // the tree's, when complete
	root TreeRoot
	want map[node]bool      // hashes still to come
	got  map[node]tlog.Hash // hashes the proofs need
}

// NewProver returns a Prover for a tree of size leaves.
func NewProver(size int64) *Prover {
	return &Prover{size: size, want: map[node]bool{}, got: map[node]tlog.Hash{}}
}

// Append adds the next leaf, whose data is b.
func (p *Prover) Append(b []byte) { p.AppendLeafHash(tlog.RecordHash(b)) }

// AppendLeafHash adds the next leaf by its hash.
func (p *Prover) AppendLeafHash(h tlog.Hash) {
	p.root.appendLeafHash(h, p.keep)
}

func (p *Prover) keep(x node, h tlog.Hash) {
	if p.want[x] {
		p.got[x] = h
		delete(p.want, x)
	}
}

// Mark asks for the proof of the next leaf, the one Append adds next.
func (p *Prover) Mark() error {
	i := p.root.n
	var need hashRecorder
	if _, err := tlog.ProveRecord(p.size, i, &need); err != nil {
		return fmt.Errorf("leaf %d of a tree of %d: %w", i, p.size, err)
	}
	// The subtrees complete before leaf i are those of the stack: one per
	// bit of i, largest first.
	onStack := map[node]tlog.Hash{}
	at, s := int64(0), 0
	for level := 62; level >= 0; level-- {
		if i&(1<<level) != 0 {
			onStack[node{level, at >> level}] = p.root.stack[s]
			at, s = at+1<<level, s+1
		}
	}
	for _, x := range need {
		if (x.k+1)<<x.level <= i {
			h, ok := onStack[x]
			if !ok {
				return fmt.Errorf("leaf %d: the proof needs a subtree no longer kept", i)
			}
			p.got[x] = h
		} else if _, ok := p.got[x]; !ok {
			p.want[x] = true
		}
	}
	return nil
}

// Prove returns the inclusion proof of leaf i, marked before it was
// appended, once the tree has all its leaves.
func (p *Prover) Prove(i int64) (tlog.RecordProof, error) {
	if p.root.n != p.size {
		return nil, fmt.Errorf("tree of %d leaves, %d appended", p.size, p.root.n)
	}
	return tlog.ProveRecord(p.size, i, hashMap(p.got))
}

// Summary is the size and root of the leaves appended.
func (p *Prover) Summary() *Tree { return p.root.Summary() }

// hashRecorder is a tlog.HashReader that notes which hashes are read.
type hashRecorder []node

func (r *hashRecorder) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	for _, x := range indexes {
		level, k := tlog.SplitStoredHashIndex(x)
		*r = append(*r, node{level, k})
	}
	return make([]tlog.Hash, len(indexes)), nil
}

// hashMap is a tlog.HashReader over the hashes a Prover kept.
type hashMap map[node]tlog.Hash

func (m hashMap) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		level, k := tlog.SplitStoredHashIndex(x)
		h, ok := m[node{level, k}]
		if !ok {
			return nil, fmt.Errorf("hash of level %d, index %d: the leaf was not marked", level, k)
		}
		out[i] = h
	}
	return out, nil
}
