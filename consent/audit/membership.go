package audit

import (
	"bytes"
	"errors"
	"fmt"

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

// MembershipProver proves x present in, or absent from, a sorted tree of
// known size while its leaves stream by (Add each in order, then Finish):
// it holds one leaf back, so that the leaf before where x would be is
// marked before it is appended.
type MembershipProver struct {
	p        *Prover
	x        []byte
	m        Membership
	i        int64  // leaves added
	pend     []byte // the leaf held back, when have
	have     bool
	pendMark bool // it needs a proof
	decided  bool // x's place is known
}

// NewMembershipProver proves x in a tree of size sorted leaves.
func NewMembershipProver(size int64, x []byte) *MembershipProver {
	return &MembershipProver{p: NewProver(size), x: x}
}

// Add takes the next leaf; leaves must be strictly increasing.
func (mp *MembershipProver) Add(leaf []byte) error {
	if mp.have && bytes.Compare(mp.pend, leaf) >= 0 {
		return fmt.Errorf("leaf %d is not after the one before: the leaves are not sorted and distinct", mp.i)
	}
	mark := false
	if !mp.decided && bytes.Compare(leaf, mp.x) >= 0 {
		mp.decided, mark = true, true
		if bytes.Equal(leaf, mp.x) {
			mp.m.Present, mp.m.Index = true, mp.i
		} else {
			mp.holdLeft()
			mp.m.Right = &Neighbor{Index: mp.i, Leaf: bytes.Clone(leaf)}
		}
	}
	if err := mp.flush(); err != nil {
		return err
	}
	mp.pend, mp.have, mp.pendMark = append(mp.pend[:0], leaf...), true, mark
	mp.i++
	return nil
}

// holdLeft makes the leaf held back, if any, x's left neighbor.
func (mp *MembershipProver) holdLeft() {
	if mp.have {
		mp.pendMark = true
		mp.m.Left = &Neighbor{Index: mp.i - 1, Leaf: bytes.Clone(mp.pend)}
	}
}

func (mp *MembershipProver) flush() error {
	if !mp.have {
		return nil
	}
	if mp.pendMark {
		if err := mp.p.Mark(); err != nil {
			return err
		}
	}
	mp.p.Append(mp.pend)
	mp.have = false
	return nil
}

// Finish returns the proof, once every leaf is added.
func (mp *MembershipProver) Finish() (*Membership, error) {
	if !mp.decided { // after the last leaf
		mp.holdLeft()
	}
	if err := mp.flush(); err != nil {
		return nil, err
	}
	if mp.i != mp.p.size {
		return nil, fmt.Errorf("%d leaves for a tree of %d", mp.i, mp.p.size)
	}
	m := mp.m
	var err error
	if m.Present {
		m.Proof, err = mp.p.Prove(m.Index)
	}
	for _, nb := range []*Neighbor{m.Left, m.Right} {
		if nb != nil && err == nil {
			nb.Proof, err = mp.p.Prove(nb.Index)
		}
	}
	if err != nil {
		return nil, err
	}
	return &m, nil
}

// Check verifies m for x against a tree of size n and root.
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
