package pipeline

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
)

// leakGuard is the last check before publishing: nothing of the inputs'
// personal data may be in what the destination receives. It keeps 64-bit
// hashes of the phone strings as typed, E.164 strings and user ids of the
// run (not the strings themselves), and checks the files to publish:
//
//   - Parquet files have exactly the contract's column, id, of the scheme's
//     type, and no key-value metadata but the scheme and key_id;
//   - every id has the scheme's exact shape and is not itself one of those
//     strings;
//   - no such string of 8 bytes or more occurs anywhere in the raw bytes of
//     any file (metadata, footers, the manifest), found with a streaming scan.
//     Strings made only of 0-9 and a-f are left to the exact check: they would
//     match hex identifiers by chance, often, at a billion users.
//
// Hashes are FNV-1a 64 of the string under a salt, so that the shards of a
// sharded run (separate processes) produce hashes the commit can merge.
//
// The hashes (needles) are spilled to disk in guardGroups groups, by a mix
// of the hash or prefix, and Check takes the groups a pass at a time, each
// pass as large as guardPassBytes allows, scanning the files once per pass:
// memory stays flat as the audience grows, and a run of up to a few million
// users checks in one pass.
type leakGuard struct {
	salt  uint64
	state uint64 // saltState(salt)
	dir   string // where the spill goes
	mu    sync.Mutex
	sp    *spill
	own   *guardWriter // Add's
	srcs  []*spill     // the spills Check reads: sp and shards'
	err   error
	// maxLen is the longest needle.
	maxLen int
	// passCount is how many passes the last Check made.
	passCount int
	// One pass's index: groups [lo, hi).
	lo, hi     uint64
	exact      []uint64 // sorted and deduplicated
	pre        []needle // sorted by prefix
	filter     []uint64 // a bit per slot of prefixes: most windows miss it
	filterBits uint
}

const (
	guardGroups    = 64
	guardGroupBits = 6
)

// guardPassBytes bounds one pass's spilled needles: about 7M needles,
// 170 MiB in memory.
var guardPassBytes int64 = 128 << 20

type needle struct {
	prefix uint64 // the first 8 bytes, little-endian
	hash   uint64
	n      int32
}

const guardPrefix = 8

// guardMix spreads a prefix's bits: its top bits pick the group, the next
// ones the filter slot.
func guardMix(p uint64) uint64 { return p * 0x9e3779b97f4a7c15 }

// newLeakGuard's salt comes from the run's key (cutoff and configuration),
// the same for every shard of a run; its spill goes into dir.
func newLeakGuard(salt uint64, dir string) *leakGuard {
	return &leakGuard{salt: salt, state: saltState(salt), dir: dir}
}

// FNV-1a 64 (the shard partition and the guard's hashes).
const fnvOffset, fnvPrime = 14695981039346656037, 1099511628211

// fnv1a continues an FNV-1a 64 hash h over s.
func fnv1a[T string | []byte](h uint64, s T) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * fnvPrime
	}
	return h
}

// saltState is the FNV-1a 64 state after the salt's bytes.
func saltState(salt uint64) uint64 {
	var sb [8]byte
	binary.LittleEndian.PutUint64(sb[:], salt)
	return fnv1a(fnvOffset, sb[:])
}

// guardHashFrom is FNV-1a 64 over the salt's bytes then s, with a final
// mix, from the state after the salt (saltState).
func guardHashFrom[T string | []byte](state uint64, s T) uint64 {
	h := fnv1a(state, s)
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}

// guardWriter registers strings from one goroutine.
type guardWriter struct {
	g      *leakGuard
	w      *spillWriter
	maxLen int
}

// writer returns a writer for one goroutine; flush it when done.
func (g *leakGuard) writer() *guardWriter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.openLocked(); g.err != nil {
		return &guardWriter{g: g}
	}
	return &guardWriter{g: g, w: g.sp.writer()}
}

// open creates the guard's spill if nothing has yet (a shard without users
// still hands one over).
func (g *leakGuard) open() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.openLocked()
	return g.err
}

func (g *leakGuard) openLocked() {
	if g.sp == nil && g.err == nil {
		if g.sp, g.err = newSpill(filepath.Join(g.dir, "guard.spill"), guardGroups, true); g.err == nil {
			g.srcs = append(g.srcs, g.sp)
		}
	}
}

// Add registers a string that must not be published.
func (w *guardWriter) Add(s string) {
	w.add(s)
	if t := strings.TrimSpace(s); t != s {
		w.add(t)
	}
}

func (w *guardWriter) add(v string) {
	if v == "" || w.w == nil {
		return
	}
	h := guardHashFrom(w.g.state, v)
	if couldBeID(len(v)) {
		p := int(h >> (64 - guardGroupBits))
		w.w.put(p, binary.LittleEndian.AppendUint64(append(w.w.buf(p), 0), h))
	}
	if len(v) < guardPrefix || lowerHex(v) {
		return
	}
	prefix := binary.LittleEndian.Uint64([]byte(v[:guardPrefix]))
	p := int(guardMix(prefix) >> (64 - guardGroupBits))
	b := binary.LittleEndian.AppendUint64(append(w.w.buf(p), 1), prefix)
	w.w.put(p, binary.AppendUvarint(binary.LittleEndian.AppendUint64(b, h), uint64(len(v))))
	w.maxLen = max(w.maxLen, len(v))
}

// flush writes what the writer holds.
func (w *guardWriter) flush() error {
	g := w.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.maxLen = max(g.maxLen, w.maxLen)
	if w.w != nil {
		if err := w.w.flush(); err != nil && g.err == nil {
			g.err = err
		}
	}
	return g.err
}

// Add registers a string from the guard's own writer (one goroutine).
func (g *leakGuard) Add(s string) {
	if g.own == nil {
		g.own = g.writer()
	}
	g.own.Add(s)
}

// finish flushes Add's writer; the spill is then complete.
func (g *leakGuard) finish() error {
	if g.own != nil {
		if err := g.own.flush(); err != nil {
			return err
		}
		g.own = nil
	}
	return g.err
}

// addShard adds a shard's spilled needles.
func (g *leakGuard) addShard(s *spill, maxLen int) {
	g.srcs = append(g.srcs, s)
	g.maxLen = max(g.maxLen, maxLen)
}

// lowerHex reports whether s is made only of 0-9 and a-f.
func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// couldBeID reports whether a string of n bytes has the length of an
// identifier of some scheme (hashing.Scheme.IDLen: 32, 44 or 64 bytes).
// Only those can equal a published id, so only those need an exact hash.
func couldBeID(n int) bool { return slices.Contains(idLens, n) }

var idLens = func() (lens []int) {
	for _, s := range hashing.Schemes() {
		lens = append(lens, s.IDLen())
	}
	return lens
}()

// passes splits the groups into passes of at most guardPassBytes of
// needles each (a group larger than that is a pass of its own).
func (g *leakGuard) passes() [][2]uint64 {
	var out [][2]uint64
	lo, bytes := uint64(0), int64(0)
	for p := range uint64(guardGroups) {
		n := partSize(g.srcs, int(p))
		if bytes > 0 && bytes+n > guardPassBytes {
			out = append(out, [2]uint64{lo, p})
			lo, bytes = p, 0
		}
		bytes += n
	}
	return append(out, [2]uint64{lo, guardGroups})
}

// load reads groups [lo, hi) into the index.
func (g *leakGuard) load(lo, hi uint64) error {
	g.lo, g.hi = lo, hi
	g.exact, g.pre = g.exact[:0], g.pre[:0]
	// Sized up front: growing large slices is what costs most here.
	total, largest := int64(0), int64(0)
	for p := lo; p < hi; p++ {
		n := partSize(g.srcs, int(p))
		total, largest = total+n, max(largest, n)
	}
	if want := int(total / 18); cap(g.pre) < want { // a needle takes at least 18 bytes
		g.pre = make([]needle, 0, want)
	}
	buf := make([]byte, 0, largest)
	var err error
	for p := lo; p < hi; p++ {
		if buf, err = appendParts(buf[:0], g.srcs, int(p)); err != nil {
			return err
		}
		rd := spillReader{b: buf}
		for rd.more() {
			kind := rd.byte()
			if kind == 0 {
				g.exact = append(g.exact, binary.LittleEndian.Uint64(rd.fixed(8)))
				continue
			}
			prefix := binary.LittleEndian.Uint64(rd.fixed(8))
			h := binary.LittleEndian.Uint64(rd.fixed(8))
			g.pre = append(g.pre, needle{prefix: prefix, hash: h, n: int32(rd.uvarint())})
		}
		if err := rd.err(); err != nil {
			return fmt.Errorf("leak guard needles: %w", err)
		}
	}
	slices.Sort(g.exact)
	g.exact = slices.Compact(g.exact)
	// By prefix only: equal prefixes stay side by side, which is all
	// candidates needs; a repeated needle costs a repeated comparison.
	slices.SortFunc(g.pre, func(a, b needle) int { return cmp.Compare(a.prefix, b.prefix) })
	g.filterBits = 16
	for 1<<g.filterBits < 8*len(g.pre) && g.filterBits < 30 {
		g.filterBits++
	}
	g.filter = make([]uint64, 1<<g.filterBits/64)
	for _, n := range g.pre {
		b := g.slot(guardMix(n.prefix))
		g.filter[b/64] |= 1 << (b % 64)
	}
	return nil
}

func (g *leakGuard) slot(mix uint64) uint64 { return mix << guardGroupBits >> (64 - g.filterBits) }

// hasExact reports whether b is a registered string, if its group is in
// the pass.
func (g *leakGuard) hasExact(b []byte) bool {
	h := guardHashFrom(g.state, b)
	if p := h >> (64 - guardGroupBits); p < g.lo || p >= g.hi {
		return false
	}
	_, found := slices.BinarySearch(g.exact, h)
	return found
}

// inPass reports whether a prefix's needles are in the pass; mix is
// guardMix(prefix).
func (g *leakGuard) inPass(mix uint64) bool {
	grp := mix >> (64 - guardGroupBits)
	return grp >= g.lo && grp < g.hi
}

// candidates returns the needles of the pass whose first 8 bytes are p;
// mix is guardMix(p), and inPass(mix).
func (g *leakGuard) candidates(p, mix uint64) []needle {
	if b := g.slot(mix); g.filter[b/64]&(1<<(b%64)) == 0 {
		return nil
	}
	i, found := slices.BinarySearchFunc(g.pre, p, func(n needle, p uint64) int { return cmp.Compare(n.prefix, p) })
	if !found {
		return nil
	}
	j := i + 1
	for j < len(g.pre) && g.pre[j].prefix == p {
		j++
	}
	return g.pre[i:j]
}

// LeakError names what the guard found, never the value itself.
type LeakError struct{ File, What string }

func (e *LeakError) Error() string {
	return fmt.Sprintf("leak guard: %s: %s; nothing published", e.File, e.What)
}

// Check scans every file under dir, once per pass.
func (g *leakGuard) Check(dir string, scheme hashing.Scheme, removesScheme hashing.Scheme) error {
	if err := g.finish(); err != nil {
		return err
	}
	passes := g.passes()
	g.passCount = len(passes)
	for i, pass := range passes {
		if err := g.load(pass[0], pass[1]); err != nil {
			return err
		}
		err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(dir, p)
			if err := g.scanRaw(p, rel); err != nil {
				return err
			}
			if strings.HasSuffix(p, ".parquet") {
				sc := scheme
				if strings.HasPrefix(filepath.ToSlash(rel), "removes/") {
					sc = removesScheme
				}
				return g.checkParquet(p, rel, sc, i == 0)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	g.exact, g.pre, g.filter = nil, nil, nil
	return nil
}

// checkParquet checks a Parquet file's ids against the pass's exact
// hashes, and with structure set its schema, metadata and ids' shape.
func (g *leakGuard) checkParquet(path, rel string, scheme hashing.Scheme, structure bool) error {
	if !structure {
		if len(g.exact) == 0 {
			return nil // nothing to look for in this pass
		}
		return g.checkIDs(path, rel, scheme, false)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return &LeakError{rel, "not a readable Parquet file: " + err.Error()}
	}
	fields := pf.Schema().Fields()
	if len(fields) != 1 || fields[0].Name() != "id" || !fields[0].Leaf() || fields[0].Optional() || fields[0].Repeated() {
		return &LeakError{rel, fmt.Sprintf("columns other than the contract's single required id column: %v", pf.Schema())}
	}
	typ := fields[0].Type()
	if scheme.Binary() {
		if typ.Kind() != parquet.FixedLenByteArray || typ.Length() != 32 {
			return &LeakError{rel, "id is not FIXED_LEN_BYTE_ARRAY(32)"}
		}
	} else if typ.Kind() != parquet.ByteArray {
		return &LeakError{rel, "id is not a string column"}
	}
	for _, kv := range pf.Metadata().KeyValueMetadata {
		if kv.Key != metaScheme && kv.Key != metaKeyID {
			return &LeakError{rel, fmt.Sprintf("unexpected key-value metadata %q", kv.Key)}
		}
	}
	return g.checkIDs(path, rel, scheme, true)
}

func (g *leakGuard) checkIDs(path, rel string, scheme hashing.Scheme, shape bool) error {
	var leak *LeakError
	err := eachPublishedID(path, scheme, func(i int64, id []byte) bool {
		if shape && !scheme.ValidID(id) {
			leak = &LeakError{rel, fmt.Sprintf("row %d: id does not have the exact shape of %s", i, scheme)}
		} else if g.hasExact(id) {
			leak = &LeakError{rel, fmt.Sprintf("row %d: id equals a phone number or user id of the input", i)}
		}
		return leak == nil
	})
	if err != nil {
		return &LeakError{rel, err.Error()}
	}
	if leak != nil {
		return leak
	}
	return nil
}

// scanRaw streams the file's bytes, looking every 8-byte window up among the
// needles' prefixes; windows overlap between chunks so nothing is missed.
func (g *leakGuard) scanRaw(path, rel string) error {
	if len(g.pre) == 0 {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	keep := g.maxLen - 1
	buf := make([]byte, 0, (1<<20)+keep)
	var off int64
	for {
		n, err := io.ReadFull(r, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		last := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !last {
			return err
		}
		// Windows starting in [0, end) are complete here or never will be.
		end := len(buf) - keep
		if last {
			end = len(buf)
		}
		for i := 0; i+guardPrefix <= len(buf) && i < end; i++ {
			p := binary.LittleEndian.Uint64(buf[i:])
			mix := guardMix(p)
			if !g.inPass(mix) {
				continue
			}
			for _, nd := range g.candidates(p, mix) {
				if n := int(nd.n); i+n <= len(buf) && guardHashFrom(g.state, buf[i:i+n]) == nd.hash {
					return &LeakError{rel, fmt.Sprintf("byte %d: a phone number or user id of the input", off+int64(i))}
				}
			}
		}
		if last {
			return nil
		}
		if end > 0 {
			off += int64(end)
			buf = buf[:copy(buf, buf[end:])]
		}
	}
}
