package pipeline

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/spill"
)

// The write stage reads the join's buckets of holders in identifier order.
// Workers load and resolve buckets ahead of the writers (a few at a time,
// so memory stays at a few buckets); the writers take them in order.

// bucketHolder is one spilled holder; its strings share the bucket's buffer.
type bucketHolder struct {
	pre             uint64 // the identifier's first 8 bytes, big-endian
	id              string
	userID, eventID string
	line            int64
	status          consent.Status
}

// resolvedBucket is one bucket after MATCHING.md's shared-number rule
// (section 3, consent.SharedNumber): a number is exported once, under its
// valid holder with the smallest user id (holders come sorted by user id),
// and not at all if any holder withdrew or has unreadable consent.
type resolvedBucket struct {
	buf     []byte
	holders []bucketHolder // sorted by identifier, user id, line
	spare   []bucketHolder // holders as read (sortHolders)
	keys    []sortKey
	order   []int32 // what export's holders slice
	export  []exportRow
	hexIDs  []byte // what export's eids share, for binary schemes
	counts  resolveCounts
	err     error
	// One number's holders' statuses and holdings (consent.SharedNumber).
	statuses []consent.Status
	holdings []consent.Holding
	// The leaves' hashes of the identifier and evidence trees (leafHashes).
	idLeaves, evLeaves []tlog.Hash
	leaf               []byte
	// refs counts the writers still reading the bucket (see hold); the
	// last to finish releases it for the next bucket.
	refs    atomic.Int32
	release func()
}

// hold gives the bucket, released by eachResolved's callback, to n readers,
// each of which calls done when it has finished with it.
func (rb *resolvedBucket) hold(n int32, release func()) {
	rb.release = release
	rb.refs.Store(n)
}

// done is one reader finished with the bucket: the last releases it.
func (rb *resolvedBucket) done() {
	if rb.refs.Add(-1) == 0 {
		rb.release()
	}
}

type resolveCounts struct {
	exported, withdrawn, unreadable, shared, duplicate int64
}

func (c *resolveCounts) addTo(u *manifest.UserCounts) {
	u.Exported += c.exported
	for reason, n := range map[string]int64{
		consent.Withdrawn.String():          c.withdrawn,
		consent.ConsentUnreadable.String():  c.unreadable,
		consent.ReasonSharedNumberWithdrawn: c.shared,
		consent.ReasonDuplicateNumber:       c.duplicate,
	} {
		if n > 0 {
			u.Excluded[reason] += n
		}
	}
}

// readHolder decodes a holder the join spilled (see joinOne): id, user
// id, event id, status, line.
func readHolder(rd *spill.Reader) bucketHolder {
	h := bucketHolder{id: rd.Str(), userID: rd.Str(), eventID: rd.Str()}
	h.status = consent.Status(rd.Byte())
	h.line = int64(rd.Uvarint())
	return h
}

func idPrefix(id string) uint64 {
	var b [8]byte
	copy(b[:], id)
	return binary.BigEndian.Uint64(b[:])
}

// resolve loads bucket p from every source and applies the rule.
func (rb *resolvedBucket) resolve(srcs []*spill.Spill, p int, binaryIDs bool) error {
	rb.buf, rb.holders, rb.order, rb.export, rb.hexIDs = rb.buf[:0], rb.holders[:0], rb.order[:0], rb.export[:0], rb.hexIDs[:0]
	rb.counts, rb.err = resolveCounts{}, nil
	var err error
	if rb.buf, err = spill.AppendParts(rb.buf, srcs, p); err != nil {
		return err
	}
	rd := spill.NewReader(rb.buf)
	for rd.More() {
		h := readHolder(&rd)
		h.pre = idPrefix(h.id)
		rb.holders = append(rb.holders, h)
	}
	if err := rd.Err(); err != nil {
		return err
	}
	hs := rb.sortHolders()
	if binaryIDs && cap(rb.hexIDs) < len(hs)*2*sha256.Size {
		rb.hexIDs = make([]byte, 0, len(hs)*2*sha256.Size) // eids point into it: it must not grow
	}
	for lo := 0; lo < len(hs); {
		hi := lo + 1
		for hi < len(hs) && hs[hi].pre == hs[lo].pre && hs[hi].id == hs[lo].id {
			hi++
		}
		rb.statuses, rb.holdings = rb.statuses[:0], slices.Grow(rb.holdings[:0], hi-lo)[:hi-lo]
		for k := lo; k < hi; k++ {
			rb.statuses = append(rb.statuses, hs[k].status)
		}
		_, exported := consent.SharedNumber(rb.statuses, rb.holdings)
		start := len(rb.order)
		for j, h := range rb.holdings {
			switch s := hs[lo+j].status; {
			case h == consent.Primary:
				rb.counts.exported++
				rb.order = append(rb.order, int32(lo+j))
			case h == consent.DuplicateNumber:
				rb.counts.duplicate++
				rb.order = append(rb.order, int32(lo+j))
			case h == consent.SharedNumberWithdrawn:
				rb.counts.shared++
			case s == consent.Withdrawn:
				rb.counts.withdrawn++
			case s == consent.ConsentUnreadable:
				rb.counts.unreadable++
			default: // the join spills no other holder (joinPart)
				return fmt.Errorf("holder status %d: %w", s, errCorrupt)
			}
		}
		if exported {
			row := exportRow{id: hs[lo].id, eid: hs[lo].id, holders: rb.order[start:]}
			if binaryIDs {
				at := len(rb.hexIDs)
				rb.hexIDs = hex.AppendEncode(rb.hexIDs, []byte(row.id))
				row.eid = bytesString(rb.hexIDs[at:])
			}
			rb.export = append(rb.export, row)
		}
		lo = hi
	}
	rb.leafHashes()
	return nil
}

// sortHolders sorts the bucket's holders by identifier, user id and line.
// It sorts 16-byte keys and gathers the 72-byte holders once, rather than
// swapping holders, which moves far fewer bytes (docs/PERFORMANCE.md).
func (rb *resolvedBucket) sortHolders() []bucketHolder {
	hs := rb.holders
	n := len(hs)
	keys := slices.Grow(rb.keys[:0], 2*n)[:2*n]
	for i := range hs {
		keys[i] = sortKey{hs[i].pre, int32(i)}
	}
	order := binSort(keys[:n], keys[n:], func(a, b sortKey) int {
		if c := cmp.Compare(a.k, b.k); c != 0 {
			return c
		}
		x, y := &hs[a.i], &hs[b.i]
		return cmp.Or(cmp.Compare(x.id, y.id), cmp.Compare(x.userID, y.userID), cmp.Compare(x.line, y.line))
	})
	sorted := rb.spare[:0]
	for _, k := range order {
		sorted = append(sorted, hs[k.i])
	}
	rb.keys, rb.spare, rb.holders = keys, hs, sorted
	return sorted
}

// eachResolved resolves the buckets of srcs with workers goroutines and
// calls fn on each, in bucket order, from one goroutine. fn may keep the
// bucket past its return, until it calls release (once, from any
// goroutine): at most workers+1+resolveLag buckets are held at once. A
// bucket larger than splitBytes is split into sub-buckets by bk.sub first
// (a file under dir), which go to fn in turn, in order. It stops at the
// first error (fn's, a bucket's or ctx's).
func eachResolved(ctx context.Context, srcs []*spill.Spill, parts, workers int, binaryIDs bool, bk *idBucketer, dir string, splitBytes int64, fn func(rb *resolvedBucket, release func()) error) error {
	type unit struct{ p, q int } // bucket p, or its sub-bucket q (q >= 0)
	var units []unit
	splits := make([]*bucketSplit, parts)
	for p := range parts {
		if spill.PartSize(srcs, p) <= splitBytes {
			units = append(units, unit{p, -1})
			continue
		}
		splits[p] = &bucketSplit{path: filepath.Join(dir, fmt.Sprintf("ids-%d.spill", p))}
		splits[p].left.Store(spillParts)
		for q := range spillParts {
			units = append(units, unit{p, q})
		}
	}
	window := workers + 1 + resolveLag
	free := make(chan *resolvedBucket, window)
	for range window {
		free <- &resolvedBucket{}
	}
	done := make(chan struct{})
	ready := make([]chan *resolvedBucket, len(units))
	for i := range ready {
		ready[i] = make(chan *resolvedBucket, 1)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	defer func() {
		for _, s := range splits {
			if s != nil && s.sp != nil {
				s.sp.Drop() // after an error; a no-op once dropped
			}
		}
	}()
	defer wg.Wait()
	defer close(done)
	for range workers {
		wg.Go(func() {
			for {
				// A slot first, then the next unit: a worker holding a
				// slot always holds the smallest unit not yet taken, so
				// the writer never waits for a unit nobody can take.
				var rb *resolvedBucket
				select {
				case rb = <-free:
				case <-done:
					return
				}
				i := int(next.Add(1) - 1)
				if i >= len(units) {
					return
				}
				if u := units[i]; u.q < 0 {
					if rb.err = rb.resolve(srcs, u.p, binaryIDs); rb.err == nil {
						spill.Consumed(srcs, u.p)
					}
				} else {
					rb.err = splits[u.p].resolve(rb, srcs, u.p, u.q, bk, binaryIDs)
				}
				ready[i] <- rb
			}
		})
	}
	for i := range units {
		var rb *resolvedBucket
		select {
		case rb = <-ready[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		if rb.err != nil {
			return rb.err
		}
		if err := fn(rb, func() { free <- rb }); err != nil {
			return err
		}
	}
	return nil
}

// resolveLag is how many buckets the writers that fn hands a bucket to may
// hold beyond the workers' window, each writer going at its own pace.
const resolveLag = 2

// bucketSplit is a bucket of holders split into sub-buckets, made by
// whichever worker needs it first and removed once every sub-bucket is
// resolved.
type bucketSplit struct {
	path string
	once sync.Once
	sp   *spill.Spill
	err  error
	left atomic.Int32
}

func (s *bucketSplit) resolve(rb *resolvedBucket, srcs []*spill.Spill, p, q int, bk *idBucketer, binaryIDs bool) error {
	s.once.Do(func() {
		s.sp, s.err = spill.Split(s.path, srcs, p, spillParts, func(b []byte) (int, int, error) {
			rd := spill.NewReader(b)
			h := readHolder(&rd)
			if err := rd.Err(); err != nil || len(h.id) < 6 {
				return 0, 0, fmt.Errorf("holders: %w", errCorrupt)
			}
			return len(b) - rd.Len(), bk.sub(h.id), nil
		})
		if s.err == nil {
			spill.Consumed(srcs, p)
		}
	})
	if s.err != nil {
		return s.err
	}
	err := rb.resolve([]*spill.Spill{s.sp}, q, binaryIDs)
	if s.left.Add(-1) == 0 {
		s.sp.Drop()
	}
	return err
}

// snapshotOf is the consent snapshot digest (see consentSnapshot) of the
// spilled line digests: each bucket sorted, the buckets in order. A bucket
// larger than splitBytes is split by the digests' next bits first (snapSub;
// a file under dir).
func snapshotOf(srcs []*spill.Spill, parts int, dir string, splitBytes int64) (string, error) {
	h := sha256.New()
	var buf []byte
	var keys []sortKey
	var sorted [][sha256.Size]byte
	digest := func(srcs []*spill.Spill, p int) error {
		var err error
		if buf, err = spill.AppendParts(buf[:0], srcs, p); err != nil {
			return err
		}
		if len(buf)%sha256.Size != 0 {
			return errors.New("snapshot lines: " + errCorrupt.Error())
		}
		if len(buf) == 0 {
			return nil
		}
		lines := unsafe.Slice((*[sha256.Size]byte)(unsafe.Pointer(unsafe.SliceData(buf))), len(buf)/sha256.Size)
		keys, sorted = sortDigests(lines, keys[:0], sorted[:0])
		h.Write(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(sorted))), len(sorted)*sha256.Size))
		return nil
	}
	for p := range parts {
		if spill.PartSize(srcs, p) <= splitBytes {
			if err := digest(srcs, p); err != nil {
				return "", err
			}
			spill.Consumed(srcs, p)
			continue
		}
		sp, err := spill.Split(filepath.Join(dir, fmt.Sprintf("snapshot-%d.spill", p)), srcs, p, spillParts, func(b []byte) (int, int, error) {
			if len(b) < sha256.Size {
				return 0, 0, errors.New("snapshot lines: " + errCorrupt.Error())
			}
			return sha256.Size, snapSub(b), nil
		})
		if err != nil {
			return "", err
		}
		spill.Consumed(srcs, p)
		for q := range spillParts {
			if err = digest([]*spill.Spill{sp}, q); err != nil {
				break
			}
		}
		sp.Drop()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sortKey is a record's first 8 bytes as a number, and its index.
type sortKey struct {
	k uint64
	i int32
}

// sortDigests appends lines, sorted, to sorted: by their first 8 bytes as
// numbers (most lines differ there, and comparing numbers is about twice as
// fast as comparing bytes), the rest only on a tie. keys is scratch space.
func sortDigests(lines [][sha256.Size]byte, keys []sortKey, sorted [][sha256.Size]byte) ([]sortKey, [][sha256.Size]byte) {
	n := len(lines)
	keys = slices.Grow(keys[:0], 2*n)[:2*n]
	for i := range lines {
		keys[i] = sortKey{binary.BigEndian.Uint64(lines[i][:8]), int32(i)}
	}
	order := binSort(keys[:n], keys[n:], func(a, b sortKey) int {
		if c := cmp.Compare(a.k, b.k); c != 0 {
			return c
		}
		return bytes.Compare(lines[a.i][8:], lines[b.i][8:])
	})
	for _, k := range order {
		sorted = append(sorted, lines[k.i])
	}
	return keys, sorted
}

// binSort sorts in by compare, which must order by k first, using out (as
// long as in) as scratch, and returns the sorted slice: in or out.
//
// The keys it sorts are the first 8 bytes of SHA-256 digests or of
// identifiers (HMAC outputs, or hashes in hex or base64), spread evenly or
// nearly so over their range: one counting pass distributes them into
// about twice as many bins as keys, by their k, and each bin, a key or two,
// is sorted by insertion, in linear time (docs/PERFORMANCE.md compares it
// with slices.SortFunc). A bin that is not small (keys crafted to share a prefix, or text
// identifiers whose bytes use few values) is sorted by comparison, so the
// worst case stays n log n.
func binSort(in, out []sortKey, compare func(a, b sortKey) int) []sortKey {
	n := len(in)
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, k := range in {
		lo, hi = min(lo, k.k), max(hi, k.k)
	}
	if n < 64 || lo == hi {
		slices.SortFunc(in, compare)
		return in
	}
	shift := max(bits.Len64(hi-lo)-bits.Len(uint(n)), 0)
	counts := make([]int32, (hi-lo)>>shift+2)
	for _, k := range in {
		counts[(k.k-lo)>>shift+1]++
	}
	for b := 1; b < len(counts); b++ {
		counts[b] += counts[b-1]
	}
	for _, k := range in {
		b := (k.k - lo) >> shift
		out[counts[b]] = k
		counts[b]++
	}
	// counts[b] is now the end of bin b, and the start of bin b+1.
	start := int32(0)
	for _, end := range counts[:len(counts)-1] {
		switch bin := out[start:end]; {
		case len(bin) > 16:
			slices.SortFunc(bin, compare)
		case len(bin) > 1:
			for i := 1; i < len(bin); i++ {
				for j := i; j > 0 && compare(bin[j-1], bin[j]) > 0; j-- {
					bin[j-1], bin[j] = bin[j], bin[j-1]
				}
			}
		}
		start = end
	}
	return out
}
