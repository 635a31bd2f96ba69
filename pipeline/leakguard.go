package pipeline

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/zeebo/xxh3"

	"audiencematch/hashing"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/spill"
)

// leakGuard is the last check before publishing: nothing of the inputs'
// personal data may be in what the destination receives, and nothing a user
// typed may stop the run. So the guard checks what a run writes by
// construction, byte for byte, and compares with the input only where input
// could have gone, the ids (see leakguard_structure.go for the structures):
//
//   - the manifest is exactly the JSON of a Manifest whose every string is
//     the run's configuration, a digest, a reason's name or a path the part
//     writer gives, and whose files are the ones published;
//   - a Parquet file is accounted for byte by byte: its footer is the one
//     the part writer gives (schema, created_by, key-value metadata) but for
//     its row groups, each one column chunk of data pages (no dictionary)
//     whose headers, column index and offset index re-encode to their own
//     bytes; only offsets, counts and bounds of the ids vary;
//   - every id, decoded from every data page, has the scheme's exact shape
//     and is not a user id of the input, the destination's key or, under a
//     keyed scheme, a phone as typed; the ids decoded are as many as the
//     data pages' headers count, and every bound the statistics and column
//     index give is the least or greatest id it describes (the column
//     index's truncated as Parquet truncates it);
//   - any other file (the run writes none) is scanned raw: no phone string
//     as typed, E.164 string or user id of 8 bytes or more may occur in it.
//     Strings made only of 0-9 and a-f are left out: they would match hex
//     by chance, often, at a billion users.
//
// The manifest and the Parquet files' structures are never searched for
// input strings: a user may type "ads_matching", the destination, the
// cutoff date or another user's sha256-e164 or uid2 id as their phone, and
// those are rightly published. For the same reason a typed phone is
// compared only with the ids of a keyed scheme (AddPhone): a user can
// compute the id of any number under an unkeyed scheme, and type it. User
// ids are assigned, not typed, so an id equal to one is a leak.
//
// Hashes are XXH3 64 of the string, seeded with a salt that every shard of
// a run shares, so that the shards (separate processes) produce hashes the
// commit can merge. XXH3 reads 8 bytes a step: FNV-1a, which reads one,
// made hashing most of the guard's time. The hashes only have to be equal
// for equal strings and rarely equal otherwise (a collision is a false
// alarm that stops the run, never a leak let through).
//
// The hashes (needles) are spilled to disk: the exact hashes of strings as
// long as an identifier (a typed phone's marked with typedTag), in
// guardGroups parts by the top bits of the hash, then the prefix needles of
// the raw scan in guardPrefixParts parts. A prefix needle is 9 bytes: a
// 32-bit hash of the string's first 8 bytes, the low 32 bits of the
// string's hash, its length. It is compared only where the raw bytes'
// 8-byte window has the same 32-bit hash, and there the string's hash is
// computed: both hashes must agree by chance for a false alarm, once in
// 2^64 such pairs. Fewer parts of needles than of
// exact hashes keep the buffers a writer fills at random few (a needle is
// written for nearly every string; an exact hash for almost none). The raw
// bytes to scan are small, so Check indexes their 8-byte windows and
// streams the prefix needles past them; the exact hashes are loaded a pass
// at a time, each pass as large as guardPassBytes allows, and every pass
// decodes the ids. Memory stays flat as the audience grows: almost no
// input string is as long as an id, so a run has one pass.
type leakGuard struct {
	salt uint64
	dir  string // where the spill goes
	// durable is set in a shard, whose spill the commit reads: one file,
	// digested.
	durable bool
	mu      sync.Mutex
	sp      *spill.Spill
	own     *guardWriter   // Add's
	srcs    []*spill.Spill // the spills Check reads: sp and shards'
	err     error
	// maxLen is the longest needle.
	maxLen int
	// passCount is how many exact passes the last Check made.
	passCount int
	// keyForms are the destination's key as raw bytes, hex and base64:
	// one has the length of the ids of each scheme, and no id may be it.
	keyForms [][]byte
	// One pass's exact hashes: groups [lo, hi), sorted and deduplicated,
	// and a bit per slot of their low bits, which most ids miss.
	lo, hi     uint64
	exact      []uint64
	filter     []uint64
	filterMask uint64
}

const (
	guardGroups    = 64
	guardGroupBits = 6
	// guardPrefixParts is how many parts the prefix needles are in: each
	// Check's worker streams a part at a time.
	guardPrefixParts = 16
	// guardParts: the exact groups, then the parts of prefix needles.
	guardParts = guardGroups + guardPrefixParts
)

// guardPassBytes bounds one pass's spilled exact hashes (8 bytes each).
var guardPassBytes int64 = 128 << 20

// guardRawBytes bounds the raw bytes indexed at once; more are scanned in
// batches, each streaming the prefix needles again.
var guardRawBytes = 64 << 20

const guardPrefix = 8

// guardPrefixHash is the 32-bit hash of a string's first 8 bytes (p,
// little-endian) that a prefix needle and the raw index's windows share:
// MurmurHash3's 64-bit finalizer of p and the salt, whose every output bit
// depends on every input bit, its top half.
func guardPrefixHash(salt, p uint64) uint32 {
	p ^= salt
	p ^= p >> 33
	p *= 0xff51afd7ed558ccd
	p ^= p >> 33
	p *= 0xc4ceb9fe1a85ec53
	p ^= p >> 33
	return uint32(p >> 32)
}

// newLeakGuard's salt comes from the run's key (cutoff and configuration),
// the same for every shard of a run; its spill goes into dir.
func newLeakGuard(salt uint64, dir string) *leakGuard {
	return &leakGuard{salt: salt, dir: dir}
}

// guardHash is the guard's hash of s under salt.
func guardHash(salt uint64, s string) uint64 { return xxh3.HashStringSeed(s, salt) }

// guardHashBytes is guardHash of string(b).
func guardHashBytes(salt uint64, b []byte) uint64 { return xxh3.HashSeed(b, salt) }

// guardWriter registers strings from one goroutine.
type guardWriter struct {
	g      *leakGuard
	w      *spill.Writer
	maxLen int
}

// writer returns a writer for one goroutine; flush it when done.
func (g *leakGuard) writer() *guardWriter {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.openLocked(); g.err != nil {
		return &guardWriter{g: g}
	}
	return &guardWriter{g: g, w: g.sp.Writer()}
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
		if g.sp, g.err = spill.New(filepath.Join(g.dir, "guard.spill"), guardParts, spill.Options{Digest: g.durable}); g.err == nil {
			g.srcs = append(g.srcs, g.sp)
		}
	}
}

// Add registers a string that must not be published: a user id, or an
// E.164 string.
func (w *guardWriter) Add(s string) { w.addTrimmed(s, false) }

// AddPhone registers a phone field as typed. It must not be published, but
// an id of an unkeyed scheme may equal it: a user can type another user's
// id, and no valid phone has the shape of a text id.
func (w *guardWriter) AddPhone(s string) { w.addTrimmed(s, true) }

func (w *guardWriter) addTrimmed(s string, typed bool) {
	w.add(s, typed)
	if t := strings.TrimSpace(s); t != s {
		w.add(t, typed)
	}
}

// typedTag marks the exact hash of a typed phone: it is looked for only
// among the ids of a keyed scheme, which nobody can compute to type.
const typedTag = 0x9e3779b97f4a7c15

func (w *guardWriter) add(v string, typed bool) {
	if v == "" || w.w == nil {
		return
	}
	h := guardHash(w.g.salt, v)
	if couldBeID(len(v)) {
		e := h
		if typed {
			e ^= typedTag
		}
		grp := int(e >> (64 - guardGroupBits))
		w.w.Put(grp, binary.LittleEndian.AppendUint64(w.w.Buf(grp), e))
	}
	if len(v) < guardPrefix || lowerHex(v) {
		return
	}
	p := guardGroups + int(h>>32)%guardPrefixParts
	b := binary.LittleEndian.AppendUint32(w.w.Buf(p), guardPrefixHash(w.g.salt, binary.LittleEndian.Uint64([]byte(v[:guardPrefix]))))
	w.w.Put(p, binary.AppendUvarint(binary.LittleEndian.AppendUint32(b, uint32(h)), uint64(len(v))))
	w.maxLen = max(w.maxLen, len(v))
}

// readNeedle decodes a prefix needle (see add): the hash of the string's
// first 8 bytes, the low 32 bits of its hash, its length.
func readNeedle(rd *spill.Reader) (prefix, h uint32, n int32) {
	prefix = binary.LittleEndian.Uint32(rd.Fixed(4))
	h = binary.LittleEndian.Uint32(rd.Fixed(4))
	return prefix, h, int32(rd.Uvarint())
}

// flush writes what the writer holds.
func (w *guardWriter) flush() error {
	g := w.g
	g.mu.Lock()
	defer g.mu.Unlock()
	g.maxLen = max(g.maxLen, w.maxLen)
	if w.w != nil {
		if err := w.w.Flush(); err != nil && g.err == nil {
			g.err = err
		}
	}
	return g.err
}

// Add registers a string from the guard's own writer (one goroutine).
func (g *leakGuard) Add(s string) { g.ownWriter().Add(s) }

// AddPhone registers a typed phone field from the guard's own writer.
func (g *leakGuard) AddPhone(s string) { g.ownWriter().AddPhone(s) }

func (g *leakGuard) ownWriter() *guardWriter {
	if g.own == nil {
		g.own = g.writer()
	}
	return g.own
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
func (g *leakGuard) addShard(s *spill.Spill, maxLen int) {
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

// passes splits the exact groups into passes of at most guardPassBytes of
// hashes each (a group larger than that is a pass of its own). There is
// always one pass at least: it checks the ids' shape.
func (g *leakGuard) passes() [][2]uint64 {
	var out [][2]uint64
	lo, bytes := uint64(0), int64(0)
	for p := range uint64(guardGroups) {
		n := spill.PartSize(g.srcs, int(p))
		if bytes > 0 && bytes+n > guardPassBytes {
			out = append(out, [2]uint64{lo, p})
			lo, bytes = p, 0
		}
		bytes += n
	}
	return append(out, [2]uint64{lo, guardGroups})
}

// load reads exact groups [lo, hi) into the pass's index.
func (g *leakGuard) load(lo, hi uint64) error {
	g.lo, g.hi = lo, hi
	g.exact = g.exact[:0]
	var buf []byte
	for p := lo; p < hi; p++ {
		err := spill.EachChunk(g.srcs, int(p), &buf, func(b []byte) error {
			if len(b)%8 != 0 {
				return fmt.Errorf("leak guard hashes: %w", errCorrupt)
			}
			for ; len(b) > 0; b = b[8:] {
				g.exact = append(g.exact, binary.LittleEndian.Uint64(b))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	slices.Sort(g.exact)
	g.exact = slices.Compact(g.exact)
	bits := uint(12) // 16 slots a hash or more: few ids reach the search
	for 1<<bits < 16*len(g.exact) && bits < 28 {
		bits++
	}
	g.filterMask = 1<<bits - 1
	g.filter = slices.Grow(g.filter[:0], 1<<bits/64)[:1<<bits/64]
	clear(g.filter)
	for _, h := range g.exact {
		x := h & g.filterMask
		g.filter[x/64] |= 1 << (x % 64)
	}
	return nil
}

// hasExact reports whether b is a registered string, if its group is in
// the pass; a typed phone only with typed set.
func (g *leakGuard) hasExact(b []byte, typed bool) bool {
	h := guardHashBytes(g.salt, b)
	return g.exactHas(h) || typed && g.exactHas(h^typedTag)
}

func (g *leakGuard) exactHas(h uint64) bool {
	if p := h >> (64 - guardGroupBits); p < g.lo || p >= g.hi {
		return false
	}
	if x := h & g.filterMask; g.filter[x/64]&(1<<(x%64)) == 0 {
		return false
	}
	_, found := slices.BinarySearch(g.exact, h)
	return found
}

// LeakError names what the guard found, never the value itself.
type LeakError struct{ File, What string }

func (e *LeakError) Error() string {
	return fmt.Sprintf("leak guard: %s: %s; nothing published", e.File, e.What)
}

// guardFile is one file to publish.
type guardFile struct {
	path, rel string
	kind      guardKind
	size      int64
	// A Parquet file's scheme and the key_id its metadata must name.
	scheme hashing.Scheme
	keyID  string
	values int64 // the ids its data pages' headers count
	// The bounds of its ids its statistics and column index give, by row
	// group.
	groups []groupBounds
}

// guardKind is how the guard checks a file.
type guardKind int

const (
	guardRaw      guardKind = iota // not written by the run: scanned raw
	guardParquet                   // a part, an add or a remove: structure and ids
	guardManifest                  // manifest.json at the top: field by field
)

// Check checks every file under dir, which holds what a run of cfg is about
// to publish, the removes' ids being of removesScheme: the manifest, each
// Parquet file's structure, the raw bytes of any other file, then each id,
// once per exact pass.
func (g *leakGuard) Check(dir string, cfg *Config, removesScheme hashing.Scheme) error {
	if err := g.finish(); err != nil {
		return err
	}
	files, err := listGuardFiles(dir)
	if err != nil {
		return err
	}
	var m *manifest.Manifest
	if i := slices.IndexFunc(files, func(f guardFile) bool { return f.kind == guardManifest }); i >= 0 {
		if m, err = checkManifest(files[i], cfg, removesScheme); err != nil {
			return err
		}
	}
	removesKeyID := "" // the previous run's, which the manifest names
	if removesScheme.Keyed() {
		removesKeyID = cfg.KeyID()
	}
	if m != nil && m.Removes != nil {
		removesKeyID = m.Removes.KeyID
	}
	for i := range files {
		if f := &files[i]; f.kind == guardParquet {
			f.scheme, f.keyID = cfg.Scheme, cfg.KeyID()
			if strings.HasPrefix(f.rel, "removes/") {
				f.scheme, f.keyID = removesScheme, removesKeyID
			}
		}
	}
	g.keyForms = nil
	if k := cfg.Key[:]; cfg.Scheme.Keyed() {
		g.keyForms = [][]byte{k, hex.AppendEncode(nil, k), base64.StdEncoding.AppendEncode(nil, k)}
	}
	defer func() { g.keyForms = nil }()
	footers := writerFooters{cfg: cfg}
	x := &rawIndex{limit: max(guardRawBytes, 2*g.maxLen+guardPrefix), keep: max(g.maxLen-1, 0), salt: g.salt}
	for i := range files {
		if err := g.scanFile(x, files, i, &footers); err != nil {
			return err
		}
	}
	if err := g.scanNeedles(x, files); err != nil {
		return err
	}
	if m != nil {
		if err := checkListed(m, files); err != nil {
			return err
		}
	}
	passes := g.passes()
	g.passCount = len(passes)
	for i, pass := range passes {
		if err := g.load(pass[0], pass[1]); err != nil {
			return err
		}
		if i > 0 && len(g.exact) == 0 {
			continue // nothing to look for in this pass
		}
		if err := g.checkIDs(files, i == 0); err != nil {
			return err
		}
	}
	g.exact, g.filter = nil, nil
	return nil
}

// listGuardFiles lists the files under dir, in lexical order.
func listGuardFiles(dir string) ([]guardFile, error) {
	var files []guardFile
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		f := guardFile{path: p, rel: filepath.ToSlash(rel)}
		switch {
		case f.rel == "manifest.json":
			f.kind = guardManifest
		case strings.HasSuffix(f.rel, ".parquet"):
			f.kind = guardParquet
		}
		files = append(files, f)
		return nil
	})
	return files, err
}

// scanFile checks files[i]'s structure if the run writes it by
// construction, or adds all its bytes to the raw index, scanning the index
// whenever it fills up.
func (g *leakGuard) scanFile(x *rawIndex, files []guardFile, i int, footers *writerFooters) error {
	f, err := os.Open(files[i].path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	files[i].size = st.Size()
	switch files[i].kind {
	case guardManifest:
		return nil // checked whole by checkManifest
	case guardParquet:
		want, err := footers.get(files[i].scheme, files[i].keyID)
		if err != nil {
			return err
		}
		return parquetLayout(f, &files[i], want)
	}
	if g.maxLen < guardPrefix {
		return nil // no needle the raw scan could find
	}
	for r := (region{0, st.Size()}); r.n > 0; {
		take := min(r.n, int64(x.limit-len(x.buf)))
		if take < r.n && take <= int64(x.keep) {
			if err := g.scanNeedles(x, files); err != nil {
				return err
			}
			continue
		}
		if err := x.add(f, i, r.off, take); err != nil {
			return err
		}
		if take == r.n {
			break
		}
		// Windows that start in the last keep bytes may run past them: the
		// next batch starts over there.
		r.off, r.n = r.off+take-int64(x.keep), r.n-take+int64(x.keep)
		if err := g.scanNeedles(x, files); err != nil {
			return err
		}
	}
	return nil
}

// region is n bytes at off in a file.
type region struct{ off, n int64 }

// checkIDs decodes the Parquet files' ids and checks each against the
// pass's exact hashes and, with shape set, the scheme's shape, the count
// the data pages' headers give and the bounds the statistics and column
// index give. A row group is a task, the tasks run on every core, and the
// leak reported is the first in file and row order.
func (g *leakGuard) checkIDs(files []guardFile, shape bool) error {
	type task struct {
		file, group int
		rows        int64  // ids decoded
		leak        int64  // the first leaking row, within the group; -1: none
		what        string // what is wrong with it
		err         error
	}
	var tasks []*task
	for i, f := range files {
		if f.kind != guardParquet {
			continue
		}
		r, err := idfile.OpenPages(f.path, f.scheme)
		if err != nil {
			return &LeakError{f.rel, err.Error()}
		}
		n := r.Groups()
		r.Close()
		if shape && n != len(f.groups) {
			return &LeakError{f.rel, fmt.Sprintf("%d row groups read, the footer has %d", n, len(f.groups))}
		}
		if n == 0 && shape && f.values != 0 {
			return &LeakError{f.rel, fmt.Sprintf("0 ids decoded, the data pages hold %d", f.values)}
		}
		for k := range n {
			tasks = append(tasks, &task{file: i, group: k, leak: -1})
		}
	}
	check := func(t *task) {
		f := files[t.file]
		r, err := idfile.OpenPages(f.path, f.scheme)
		if err != nil {
			t.err = err
			return
		}
		defer r.Close()
		r.Only(t.group)
		var gb *groupBounds // nil: not the shape pass
		var key []byte      // the key as an id of the scheme would be
		if shape {
			gb = &f.groups[t.group]
			for _, k := range g.keyForms {
				if len(k) == f.scheme.IDLen() {
					key = k
				}
			}
		}
		keyed := f.scheme.Keyed()
		var lo, hi []byte // the group's least and greatest ids so far
		for page := 0; ; page++ {
			data, offs, err := r.Next()
			if err == io.EOF {
				if gb != nil {
					if what := gb.chunkError(page, lo, hi); what != "" {
						t.leak, t.what = 0, what
					}
				}
				return
			}
			if err != nil {
				t.err = err
				return
			}
			first := t.rows
			var plo, phi []byte // the page's least and greatest ids
			for k := range r.Count(data, offs) {
				id := r.Value(data, offs, k)
				if shape {
					switch {
					case !f.scheme.ValidID(id):
						t.leak, t.what = t.rows, "id does not have the exact shape of "+string(f.scheme)
						return
					case key != nil && bytes.Equal(id, key):
						t.leak, t.what = t.rows, "id equals the destination's key"
						return
					}
					if plo == nil || idLess(id, plo) {
						plo = id
					}
					if phi == nil || idLess(phi, id) {
						phi = id
					}
				}
				if len(g.exact) > 0 && g.hasExact(id, keyed) {
					t.leak, t.what = t.rows, "id equals a phone number or user id of the input"
					return
				}
				t.rows++
			}
			if gb == nil {
				continue
			}
			if what := gb.pageError(page, plo, phi); what != "" {
				t.leak, t.what = first, what
				return
			}
			if plo != nil && (lo == nil || idLess(plo, lo)) {
				lo = append(lo[:0], plo...)
			}
			if phi != nil && (hi == nil || idLess(hi, phi)) {
				hi = append(hi[:0], phi...)
			}
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(tasks)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(tasks)); i = next.Add(1) - 1 {
				check(tasks[i])
			}
		})
	}
	wg.Wait()
	rows := int64(0) // of the file, before the task
	for i, t := range tasks {
		f := files[t.file]
		if i == 0 || tasks[i-1].file != t.file {
			rows = 0
		}
		switch {
		case t.err != nil:
			return &LeakError{f.rel, t.err.Error()}
		case t.leak >= 0:
			return &LeakError{f.rel, fmt.Sprintf("row %d: %s", rows+t.leak, t.what)}
		}
		rows += t.rows
		if last := i == len(tasks)-1 || tasks[i+1].file != t.file; last && shape && rows != f.values {
			return &LeakError{f.rel, fmt.Sprintf("%d ids decoded, the data pages hold %d", rows, f.values)}
		}
	}
	return nil
}

// idLess reports whether id a sorts before b, as Parquet orders byte
// arrays (unsigned, byte by byte). Their first 8 bytes nearly always
// decide.
func idLess(a, b []byte) bool {
	if len(a) >= 8 && len(b) >= 8 {
		if x, y := binary.BigEndian.Uint64(a), binary.BigEndian.Uint64(b); x != y {
			return x < y
		}
	}
	return bytes.Compare(a, b) < 0
}

// rawIndex holds raw bytes to scan, end to end, and an index of their
// 8-byte windows by hash (guardPrefixHash).
type rawIndex struct {
	limit, keep int    // the most bytes it holds; how far needles may reach back
	salt        uint64 // the guard's
	buf         []byte
	regs        []rawRegion // by start
	keys        []rawKey    // by prefix hash, then position
	filter      []uint64    // a bit per slot of prefix hashes: most needles miss it
	filterBits  uint
}

// rawRegion is buf[start:end], from byte off of files[file].
type rawRegion struct {
	start, end int
	file       int
	off        int64
}

type rawKey struct {
	prefix   uint32 // the window's guardPrefixHash
	pos, end int32  // the window's position and its region's end in buf
}

// add reads n bytes at off of file i.
func (x *rawIndex) add(f *os.File, i int, off, n int64) error {
	at := len(x.buf)
	x.buf = slices.Grow(x.buf, int(n))[:at+int(n)]
	if _, err := f.ReadAt(x.buf[at:], off); err != nil {
		return err
	}
	x.regs = append(x.regs, rawRegion{at, len(x.buf), i, off})
	return nil
}

// build indexes the windows of the bytes held.
func (x *rawIndex) build() {
	x.keys = x.keys[:0]
	for _, r := range x.regs {
		for i := r.start; i+guardPrefix <= r.end; i++ {
			x.keys = append(x.keys, rawKey{guardPrefixHash(x.salt, binary.LittleEndian.Uint64(x.buf[i:])), int32(i), int32(r.end)})
		}
	}
	slices.SortFunc(x.keys, func(a, b rawKey) int {
		return cmp.Or(cmp.Compare(a.prefix, b.prefix), cmp.Compare(a.pos, b.pos))
	})
	x.filterBits = 16
	for 1<<x.filterBits < 8*len(x.keys) && x.filterBits < 30 {
		x.filterBits++
	}
	x.filter = make([]uint64, 1<<x.filterBits/64)
	for _, k := range x.keys {
		b := k.prefix >> (32 - x.filterBits)
		x.filter[b/64] |= 1 << (b % 64)
	}
}

// windows returns the windows whose first 8 bytes hash to p.
func (x *rawIndex) windows(p uint32) []rawKey {
	if b := p >> (32 - x.filterBits); x.filter[b/64]&(1<<(b%64)) == 0 {
		return nil
	}
	i, found := slices.BinarySearchFunc(x.keys, p, func(k rawKey, p uint32) int { return cmp.Compare(k.prefix, p) })
	if !found {
		return nil
	}
	j := i + 1
	for j < len(x.keys) && x.keys[j].prefix == p {
		j++
	}
	return x.keys[i:j]
}

func (x *rawIndex) reset() {
	x.buf, x.regs, x.keys = x.buf[:0], x.regs[:0], x.keys[:0]
}

// scanNeedles streams every prefix needle past the index, then empties it.
// Of the leaks found it reports the first in file order, whatever order the
// needles come in.
func (g *leakGuard) scanNeedles(x *rawIndex, files []guardFile) error {
	defer x.reset()
	if len(x.regs) == 0 {
		return nil
	}
	if x.build(); len(x.keys) == 0 {
		return nil
	}
	workers := min(runtime.GOMAXPROCS(0), guardPrefixParts)
	first := make([]int32, workers) // the smallest leaking position each worker found
	errs := make([]error, workers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		first[w] = -1
		wg.Go(func() {
			var buf []byte
			for p := int(next.Add(1) - 1); p < guardPrefixParts && errs[w] == nil; p = int(next.Add(1) - 1) {
				errs[w] = spill.EachChunk(g.srcs, guardGroups+p, &buf, func(b []byte) error {
					rd := spill.NewReader(b)
					for rd.More() {
						prefix, h, n := readNeedle(&rd)
						for _, k := range x.windows(prefix) {
							if k.pos+n <= k.end && (first[w] < 0 || k.pos < first[w]) && uint32(guardHashBytes(g.salt, x.buf[k.pos:k.pos+n])) == h {
								first[w] = k.pos
							}
						}
					}
					if err := rd.Err(); err != nil {
						return fmt.Errorf("leak guard needles: %w", err)
					}
					return nil
				})
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	pos := int32(-1)
	for _, p := range first {
		if p >= 0 && (pos < 0 || p < pos) {
			pos = p
		}
	}
	if pos < 0 {
		return nil
	}
	i, _ := slices.BinarySearchFunc(x.regs, int(pos), func(r rawRegion, pos int) int {
		if r.end <= pos {
			return -1
		}
		if r.start > pos {
			return 1
		}
		return 0
	})
	r := x.regs[i]
	return &LeakError{files[r.file].rel, fmt.Sprintf("byte %d: a phone number or user id of the input", r.off+int64(int(pos)-r.start))}
}
