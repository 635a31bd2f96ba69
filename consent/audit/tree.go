package audit

import (
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/tlog"
)

// MerkleTree is an in-memory RFC 6962 tree built with tlog: it keeps the
// hashes tlog.StoredHashes asks to store, about two per leaf, and answers
// tlog's HashReader for roots and proofs.
type MerkleTree struct {
	hashes []tlog.Hash
	n      int64
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
// keeping only the compact range of the leaves so far (RFC 6962's perfect
// subtrees left of the next leaf, one hash per level), for trees too large
// to hold, such as a run's identifiers. Its zero value is an empty tree; it
// must not be copied once a leaf is appended.
type TreeRoot struct {
	r *compact.Range // [0, leaves appended)
	s *hashSpace     // the range's hashes
}

// Append adds a leaf whose data is b.
func (t *TreeRoot) Append(b []byte) { t.AppendLeafHash(tlog.RecordHash(b)) }

// AppendLeafHash adds a leaf by its hash, tlog.RecordHash of its data: the
// leaves' hashes can be computed elsewhere, in parallel, and only the
// interior nodes here, in order.
func (t *TreeRoot) AppendLeafHash(h tlog.Hash) { t.appendLeafHash(h, nil) }

// Summary is the tree's size and root, as records carry it.
func (t *TreeRoot) Summary() *Tree {
	root := rfc6962.DefaultHasher.EmptyRoot() // RFC 6962 section 2.1: MTH({}) = SHA-256()
	if t.size() > 0 {
		t.reserve()
		root, _ = t.r.GetRootHash(nil) // cannot fail: the range starts at 0
	}
	return &Tree{Size: t.size(), Root: hex.EncodeToString(root)}
}

// appendLeafHash adds a leaf by its hash; visit, if not nil, is called with
// every complete subtree the leaf completes: the leaf itself, then each node
// merged above it.
func (t *TreeRoot) appendLeafHash(h tlog.Hash, visit compact.VisitFn) {
	if t.s == nil || !t.s.room() {
		t.reserve()
	}
	if err := t.r.Append(t.s.keep(h), visit); err != nil {
		// A range grown one leaf at a time from 0 always has the hashes
		// its next merge needs.
		panic(fmt.Sprintf("audit: compact range [0, %d): %v", t.r.End(), err))
	}
}

// size is the number of leaves appended.
func (t *TreeRoot) size() int64 {
	if t.r == nil {
		return 0
	}
	return int64(t.r.End())
}

// reserve makes room in t.s for the hashes of one Append or GetRootHash,
// moving the range's hashes to the spare block when the current one is
// nearly full. Nothing outside t.r holds a hash of the block given up: the
// range's visitors and readers copy what they keep.
func (t *TreeRoot) reserve() {
	if t.s == nil {
		t.s = newHashSpace()
		t.r = t.s.rf.NewEmptyRange(0)
	}
	if t.s.room() {
		return
	}
	t.s.cur, t.s.spare = t.s.spare[:0], t.s.cur
	live := t.r.Hashes() // t.r is replaced: its slice is reused
	for i, h := range live {
		live[i] = t.s.keep(tlog.Hash(h))
	}
	r, err := t.s.rf.NewRange(0, t.r.End(), live)
	if err != nil {
		panic(fmt.Sprintf("audit: compact range [0, %d): %v", t.r.End(), err))
	}
	t.r = r
}

// hashSpace holds the hashes of a compact range. compact.Range keeps each
// hash as a slice of its own, and a heap allocation per leaf and per
// interior node is a large share of the cost of hashing them, for trees of
// millions of leaves. The hashes are carved from a block instead; when it
// is nearly full the range, a hash per level, moves to the spare block, and
// the two serve a tree of any size.
type hashSpace struct {
	rf         compact.RangeFactory // hashing into this space
	cur, spare []byte
}

const (
	spaceHashes = 2048 // hashes per block
	opHashes    = 64   // the most one Append makes: the leaf and a node per level
)

func newHashSpace() *hashSpace {
	s := &hashSpace{
		cur:   make([]byte, 0, spaceHashes*tlog.HashSize),
		spare: make([]byte, 0, spaceHashes*tlog.HashSize),
	}
	s.rf.Hash = s.nodeHash
	return s
}

// room reports whether one more Append or GetRootHash fits in the block.
func (s *hashSpace) room() bool { return cap(s.cur)-len(s.cur) >= opHashes*tlog.HashSize }

// keep returns a copy of h in the current block, where TreeRoot.reserve
// has made room.
func (s *hashSpace) keep(h tlog.Hash) []byte {
	n := len(s.cur)
	b := s.cur[n : n+tlog.HashSize : n+tlog.HashSize]
	*(*tlog.Hash)(b) = h
	s.cur = s.cur[:n+tlog.HashSize]
	return b
}

// nodeHash is the compact.HashFn of RFC 6962 section 2.1's interior nodes,
// SHA-256(0x01 || left || right). It is tlog.NodeHash, which hashes from
// the stack, rather than rfc6962.DefaultHasher.HashChildren, which
// allocates a hash.Hash and two slices per node; the bytes are the same.
func (s *hashSpace) nodeHash(left, right []byte) []byte {
	return s.keep(tlog.NodeHash(tlog.Hash(left), tlog.Hash(right)))
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
	want map[compact.NodeID]bool      // hashes still to come
	got  map[compact.NodeID]tlog.Hash // hashes the proofs need
}

// NewProver returns a Prover for a tree of size leaves.
func NewProver(size int64) *Prover {
	return &Prover{size: size, want: map[compact.NodeID]bool{}, got: map[compact.NodeID]tlog.Hash{}}
}

// Append adds the next leaf, whose data is b.
func (p *Prover) Append(b []byte) { p.AppendLeafHash(tlog.RecordHash(b)) }

// AppendLeafHash adds the next leaf by its hash.
func (p *Prover) AppendLeafHash(h tlog.Hash) { p.root.appendLeafHash(h, p.keep) }

// keep is the visitor of every complete subtree as the range grows.
func (p *Prover) keep(id compact.NodeID, h []byte) {
	if p.want[id] {
		p.got[id] = tlog.Hash(h)
		delete(p.want, id)
	}
}

// Mark asks for the proof of the next leaf, the one Append adds next.
func (p *Prover) Mark() error {
	i := p.root.size()
	var need hashRecorder
	if _, err := tlog.ProveRecord(p.size, i, &need); err != nil {
		return fmt.Errorf("leaf %d of a tree of %d: %w", i, p.size, err)
	}
	// The proof's subtrees that end before leaf i are its left siblings
	// (RFC 6962 section 2.1.1), each a node of the compact range [0, i):
	// take them from the range now, and the rest as they complete.
	ids := compact.RangeNodes(0, uint64(i), nil)
	for _, x := range need {
		if _, end := x.Coverage(); end <= uint64(i) {
			k := slices.Index(ids, x)
			if k < 0 {
				return fmt.Errorf("leaf %d: the proof needs a subtree no longer kept", i)
			}
			p.got[x] = tlog.Hash(p.root.r.Hashes()[k])
		} else if _, ok := p.got[x]; !ok {
			p.want[x] = true
		}
	}
	return nil
}

// Prove returns the inclusion proof of leaf i, marked before it was
// appended, once the tree has all its leaves.
func (p *Prover) Prove(i int64) (tlog.RecordProof, error) {
	if n := p.root.size(); n != p.size {
		return nil, fmt.Errorf("tree of %d leaves, %d appended", p.size, n)
	}
	return tlog.ProveRecord(p.size, i, hashMap(p.got))
}

// hashRecorder is a tlog.HashReader that notes which hashes are read.
type hashRecorder []compact.NodeID

func (r *hashRecorder) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	for _, x := range indexes {
		*r = append(*r, nodeID(x))
	}
	return make([]tlog.Hash, len(indexes)), nil
}

// hashMap is a tlog.HashReader over the hashes a Prover kept.
type hashMap map[compact.NodeID]tlog.Hash

func (m hashMap) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		id := nodeID(x)
		h, ok := m[id]
		if !ok {
			return nil, fmt.Errorf("hash of level %d, index %d: the leaf was not marked", id.Level, id.Index)
		}
		out[i] = h
	}
	return out, nil
}

// nodeID names tlog's stored hash index x by the subtree it is the root of.
func nodeID(x int64) compact.NodeID {
	level, k := tlog.SplitStoredHashIndex(x)
	return compact.NewNodeID(uint(level), uint64(k))
}

// SameTree reports, as an error naming what, whether a tree rebuilt from
// files differs from the one a record holds.
func SameTree(got, want *Tree, what string) error {
	if *got != *want {
		return fmt.Errorf("%s tree: %d leaves, root %s; the log says %d, %s", what, got.Size, got.Root, want.Size, want.Root)
	}
	return nil
}
