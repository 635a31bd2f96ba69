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
func (t *TreeRoot) AppendLeafHash(h tlog.Hash) {
	for k := t.n; k&1 == 1; k >>= 1 {
		h = tlog.NodeHash(t.stack[len(t.stack)-1], h)
		t.stack = t.stack[:len(t.stack)-1]
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
