package leakguard

import (
	"bytes"
	"cmp"
	"crypto/sha256"
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

// Guard registers the strings that must not be published and checks a
// directory against them (see the package doc). Its writers may be used by
// as many goroutines as there are writers; Add, AddPhone, Finish, AddShard
// and Check by one goroutine.
type Guard struct {
	salt    uint64
	dir     string // where the spill goes
	durable bool   // see Options.Durable
	mu      sync.Mutex
	sp      *spill.Spill
	own     *Writer        // Add's
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

// Parts is how many partitions a guard's spill has (see the package doc):
// a commit opens a shard's spill with as many.
const Parts = guardParts

// guardPassBytes bounds one pass's spilled exact hashes (8 bytes each);
// SmallPasses lowers it.
var guardPassBytes int64 = 128 << 20

// guardRawBytes bounds the raw bytes indexed at once; more are scanned in
// batches, each streaming the prefix needles again. SmallPasses lowers it.
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

// Options are a guard's settings.
type Options struct {
	// Durable makes the spill one digested file (spill.Options.Digest), as
	// a shard's must be for its commit to read it.
	Durable bool
}

// New returns a guard whose needles are hashed with salt (Salt) and
// spilled into dir (SetDir may set it later, before the first string).
func New(salt uint64, dir string, opts Options) *Guard {
	return &Guard{salt: salt, dir: dir, durable: opts.Durable}
}

// Salt is the salt of a run whose configuration digest is configDigest:
// the same in every shard of the run, so that their needles merge.
func Salt(configDigest string) uint64 {
	sum := sha256.Sum256([]byte("audiencematch/guard/" + configDigest))
	return binary.LittleEndian.Uint64(sum[:])
}

// SetDir sets where the spill goes; it must be called before the first
// string is registered.
func (g *Guard) SetDir(dir string) { g.dir = dir }

// guardHash is the guard's hash of s under salt.
func guardHash(salt uint64, s string) uint64 { return xxh3.HashStringSeed(s, salt) }

// guardHashBytes is guardHash of string(b).
func guardHashBytes(salt uint64, b []byte) uint64 { return xxh3.HashSeed(b, salt) }

// Writer registers strings from one goroutine.
type Writer struct {
	g      *Guard
	w      *spill.Writer
	maxLen int
}

// Writer returns a writer for one goroutine; Flush it when done.
func (g *Guard) Writer() *Writer {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.openLocked(); g.err != nil {
		return &Writer{g: g}
	}
	return &Writer{g: g, w: g.sp.Writer()}
}

// Open creates the guard's spill if nothing has yet, so that a shard
// without users still hands one over.
func (g *Guard) Open() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.openLocked()
	return g.err
}

func (g *Guard) openLocked() {
	if g.sp == nil && g.err == nil {
		if g.sp, g.err = spill.New(filepath.Join(g.dir, "guard.spill"), guardParts, spill.Options{Digest: g.durable}); g.err == nil {
			g.srcs = append(g.srcs, g.sp)
		}
	}
}

// Add registers a string that must not be published: a user id, or an
// E.164 string.
func (w *Writer) Add(s string) { w.addTrimmed(s, false) }

// AddPhone registers a phone field as typed. It must not be published, but
// an id of an unkeyed scheme may equal it: a user can type another user's
// id, and no valid phone has the shape of a text id.
func (w *Writer) AddPhone(s string) { w.addTrimmed(s, true) }

func (w *Writer) addTrimmed(s string, typed bool) {
	w.add(s, typed)
	if t := strings.TrimSpace(s); t != s {
		w.add(t, typed)
	}
}

// typedTag marks the exact hash of a typed phone: it is looked for only
// among the ids of a keyed scheme, which nobody can compute to type.
const typedTag = 0x9e3779b97f4a7c15

func (w *Writer) add(v string, typed bool) {
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

// Flush writes what the writer holds, and reports the guard's first
// error.
func (w *Writer) Flush() error {
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
func (g *Guard) Add(s string) { g.ownWriter().Add(s) }

// AddPhone registers a typed phone field from the guard's own writer.
func (g *Guard) AddPhone(s string) { g.ownWriter().AddPhone(s) }

func (g *Guard) ownWriter() *Writer {
	if g.own == nil {
		g.own = g.Writer()
	}
	return g.own
}

// Finish flushes Add's writer; the spill is then complete.
func (g *Guard) Finish() error {
	if g.own != nil {
		if err := g.own.Flush(); err != nil {
			return err
		}
		g.own = nil
	}
	return g.err
}

// AddShard adds a shard's spilled needles (its Spill, opened with its
// index) and the longest string it registered (its MaxLen).
func (g *Guard) AddShard(s *spill.Spill, maxLen int) {
	g.srcs = append(g.srcs, s)
	g.maxLen = max(g.maxLen, maxLen)
}

// Spill is the guard's own spill, nil before the first string or Open.
func (g *Guard) Spill() *spill.Spill { return g.sp }

// Spills are the spills Check reads, the guard's own and the shards'; the
// guard never closes them.
func (g *Guard) Spills() []*spill.Spill { return g.srcs }

// MaxLen is the length of the longest string registered, once the writers
// are flushed.
func (g *Guard) MaxLen() int { return g.maxLen }

// Passes is how many exact passes the last Check made.
func (g *Guard) Passes() int { return g.passCount }

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
func (g *Guard) passes() [][2]uint64 {
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
func (g *Guard) load(lo, hi uint64) error {
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
func (g *Guard) hasExact(b []byte, typed bool) bool {
	h := guardHashBytes(g.salt, b)
	return g.exactHas(h) || typed && g.exactHas(h^typedTag)
}

func (g *Guard) exactHas(h uint64) bool {
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

// errCorrupt is the error of needles that do not decode.
var errCorrupt = errors.New("corrupt")

// Expect is what a run writes by construction, which Check compares the
// published files with.
type Expect struct {
	// Manifest is the manifest as the run's configuration fills it before
	// any stage runs: its version, tool_version, destination, as_of,
	// purpose, policy, scheme, key_id and config_digest are what the
	// published manifest must hold; its scheme and key_id are also the
	// parts' and adds'. Its other fields are not read.
	Manifest *manifest.Manifest
	// Key is the destination's key, which no id may be (under a keyed
	// scheme).
	Key hashing.DestKey
	// Layout is how the part writer cuts the parts: its footers are the
	// ones a Parquet file may have.
	Layout idfile.Layout
	// InputNames gives the name of the input of each table (source.TableUsers,
	// source.TableConsent) that the manifest must list; nil leaves the
	// names unchecked, as a commit does, whose shards check that their
	// sources agree.
	InputNames func(table string) string
}

// Check checks every file under dir, which holds what a run is about to
// publish, against the strings registered and e; the removes' ids are of
// removesScheme (the previous run's scheme, whose key_id the manifest
// names). It checks the manifest, each Parquet file's structure, the raw
// bytes of any other file, then each id, once per exact pass. What it
// finds is a *LeakError.
func (g *Guard) Check(dir string, e Expect, removesScheme hashing.Scheme) error {
	if err := g.Finish(); err != nil {
		return err
	}
	scheme, keyID := hashing.Scheme(e.Manifest.Scheme), e.Manifest.KeyID
	files, err := listGuardFiles(dir)
	if err != nil {
		return err
	}
	var m *manifest.Manifest
	if i := slices.IndexFunc(files, func(f guardFile) bool { return f.kind == guardManifest }); i >= 0 {
		if m, err = checkManifest(files[i], &e, removesScheme); err != nil {
			return err
		}
	}
	removesKeyID := "" // the previous run's, which the manifest names
	if removesScheme.Keyed() {
		removesKeyID = keyID
	}
	if m != nil && m.Removes != nil {
		removesKeyID = m.Removes.KeyID
	}
	for i := range files {
		if f := &files[i]; f.kind == guardParquet {
			f.scheme, f.keyID = scheme, keyID
			if strings.HasPrefix(f.rel, "removes/") {
				f.scheme, f.keyID = removesScheme, removesKeyID
			}
		}
	}
	g.keyForms = nil
	if k := e.Key[:]; scheme.Keyed() {
		g.keyForms = [][]byte{k, hex.AppendEncode(nil, k), base64.StdEncoding.AppendEncode(nil, k)}
	}
	defer func() { g.keyForms = nil }()
	footers := writerFooters{layout: e.Layout}
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
func (g *Guard) scanFile(x *rawIndex, files []guardFile, i int, footers *writerFooters) error {
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
func (g *Guard) checkIDs(files []guardFile, shape bool) error {
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
func (g *Guard) scanNeedles(x *rawIndex, files []guardFile) error {
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
