package audit

import (
	"bytes"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/mod/sumdb/tlog"
)

// Membership proves that a value is, or is not, a leaf of a sorted tree of
// distinct leaves (a run's exported identifiers). Absence is shown by the two
// adjacent leaves around where the value would be, each with its inclusion
// proof; at either end, by the first or last leaf alone. That the leaves are
// sorted is what `audit verify` checks of every published run.
type Membership struct {
	Present bool             `json:"present"`
	Index   int64            `json:"index,omitempty"` // when present
	Proof   tlog.RecordProof `json:"proof,omitempty"`
	Left    *Neighbor        `json:"left,omitempty"` // when absent: the largest smaller leaf
	Right   *Neighbor        `json:"right,omitempty"`
}

// Neighbor is a leaf beside an absent value.
type Neighbor struct {
	Index int64            `json:"index"`
	Leaf  []byte           `json:"leaf"`
	Proof tlog.RecordProof `json:"proof"`
}

// ProveMembership finds x among the sorted leaves of t.
func ProveMembership(t *MerkleTree, leaves [][]byte, x []byte) (*Membership, error) {
	n := int64(len(leaves))
	if n != t.Size() {
		return nil, fmt.Errorf("%d leaves for a tree of %d", n, t.Size())
	}
	i := int64(sort.Search(len(leaves), func(i int) bool { return bytes.Compare(leaves[i], x) >= 0 }))
	if i < n && bytes.Equal(leaves[i], x) {
		p, err := t.Prove(i, n)
		return &Membership{Present: true, Index: i, Proof: p}, err
	}
	m := &Membership{}
	for _, j := range []int64{i - 1, i} {
		if j < 0 || j >= n {
			continue
		}
		p, err := t.Prove(j, n)
		if err != nil {
			return nil, err
		}
		nb := &Neighbor{Index: j, Leaf: leaves[j], Proof: p}
		if j < i {
			m.Left = nb
		} else {
			m.Right = nb
		}
	}
	return m, nil
}

// CheckMembership verifies m for x against a tree of size n and root.
func (m *Membership) Check(x []byte, n int64, root tlog.Hash) error {
	if m.Present {
		return tlog.CheckRecord(m.Proof, n, root, m.Index, tlog.RecordHash(x))
	}
	if n == 0 {
		empty, _ := tlog.TreeHash(0, nil)
		if root != empty {
			return errors.New("absence in an empty tree, but the root is not the empty root")
		}
		return nil
	}
	l, r := m.Left, m.Right
	switch {
	case l == nil && r == nil:
		return errors.New("absence proof has no neighbors")
	case l == nil && (r.Index != 0 || bytes.Compare(x, r.Leaf) >= 0):
		return errors.New("absence proof: value is not before the first leaf")
	case r == nil && (l.Index != n-1 || bytes.Compare(l.Leaf, x) >= 0):
		return errors.New("absence proof: value is not after the last leaf")
	case l != nil && r != nil && (r.Index != l.Index+1 || bytes.Compare(l.Leaf, x) >= 0 || bytes.Compare(x, r.Leaf) >= 0):
		return errors.New("absence proof: neighbors are not adjacent around the value")
	}
	for _, nb := range []*Neighbor{l, r} {
		if nb == nil {
			continue
		}
		if err := tlog.CheckRecord(nb.Proof, n, root, nb.Index, tlog.RecordHash(nb.Leaf)); err != nil {
			return fmt.Errorf("absence proof: neighbor %d: %w", nb.Index, err)
		}
	}
	return nil
}

// EvidenceLeaf is the leaf data of one evidence row:
// id NUL user_id NUL event_id NUL ("1" if primary, else "0").
func EvidenceLeaf(id, userID, eventID string, primary bool) []byte {
	return AppendEvidenceLeaf(nil, id, userID, eventID, primary)
}

// AppendEvidenceLeaf appends EvidenceLeaf's bytes to dst.
func AppendEvidenceLeaf(dst []byte, id, userID, eventID string, primary bool) []byte {
	p := byte('0')
	if primary {
		p = '1'
	}
	dst = append(append(dst, id...), 0)
	dst = append(append(dst, userID...), 0)
	dst = append(append(dst, eventID...), 0)
	return append(dst, p)
}
