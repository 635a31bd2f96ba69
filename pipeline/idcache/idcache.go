package idcache

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync/atomic"

	"golang.org/x/crypto/hkdf"

	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/spill"
)

// Sizes of the file's parts (see the package documentation).
const (
	TagLen    = 16
	EntryLen  = TagLen + hashing.OPRFIDLen
	headerLen = 25 + 16 + 1 + 8 // version and a space, key_id, newline, count
	macLen    = sha256.Size
)

const version = "audiencematch-idcache/v1"

var keyIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// Key is the cache key: a secret, like the keys it is derived from.
type Key [32]byte

// String redacts the key.
func (Key) String() string { return "idcache.Key(redacted)" }

// GoString redacts the key for %#v too.
func (k Key) GoString() string { return k.String() }

// DeriveKey computes the cache key from skS (package documentation).
func DeriveKey(skS hashing.DestKey, destination string) (Key, error) {
	var k Key
	r := hkdf.New(sha256.New, skS[:], nil, []byte("audiencematch/v1/idcache/"+destination))
	if _, err := io.ReadFull(r, k[:]); err != nil {
		return k, err
	}
	return k, nil
}

// Path is the cache file of destination under the state directory.
func Path(state, destination string) string {
	return filepath.Join(state, "idcache", destination+".cache")
}

// ShardPath is the cache file of shard index of count: a user's shard is
// fixed by a hash of the user id, so night after night a shard looks up
// the numbers of the same users, and keeps a cache of its own.
func ShardPath(state, destination string, index, count int) string {
	return filepath.Join(state, "idcache", fmt.Sprintf("%s.shard-%d-of-%d.cache", destination, index, count))
}

// Tagger computes tags. It reuses its HMAC state, so it is not safe for
// concurrent use: give each goroutine its own.
type Tagger struct {
	mac hash.Hash
	buf []byte
	sum []byte
}

// NewTagger returns a Tagger under key.
func NewTagger(key Key) *Tagger { return &Tagger{mac: hmac.New(sha256.New, key[:])} }

// Tag is the first 16 bytes of HMAC-SHA256(cache key, e164).
func (t *Tagger) Tag(e164 string) (tag [TagLen]byte) {
	t.buf = append(t.buf[:0], e164...)
	t.mac.Reset()
	t.mac.Write(t.buf)
	t.sum = t.mac.Sum(t.sum[:0])
	copy(tag[:], t.sum)
	return tag
}

// Cache is an opened cache file: read-only and safe for concurrent use.
type Cache struct {
	entries []byte // count * EntryLen bytes, sorted by tag
	unmap   func() error
	used    []atomic.Uint64 // a bit per entry: found by Lookup (Builder.Write keeps those)
	// index[b] is the first entry whose tag's top shift bits are at
	// least b (index[len-1] is the count): a lookup searches only its
	// bucket, about eight entries in a few cache lines, rather than the
	// whole file, each probe of which would be a cache miss.
	index []uint32
	shift uint
}

// Len is the number of entries.
func (c *Cache) Len() int { return len(c.entries) / EntryLen }

// Lookup returns the identifier cached under tag, or nil, and marks the
// entry used (Builder.Write keeps the used entries). The slice is the
// cache's: valid until Close, not to be changed.
func (c *Cache) Lookup(tag *[TagLen]byte) []byte {
	m := c.find(tag[:])
	if m < 0 {
		return nil
	}
	if w := &c.used[m/64]; w.Load()&(1<<(m%64)) == 0 {
		w.Or(1 << (m % 64))
	}
	return c.entries[m*EntryLen+TagLen : (m+1)*EntryLen : (m+1)*EntryLen]
}

// find is the index of the entry of tag, or -1.
func (c *Cache) find(tag []byte) int {
	if c.Len() == 0 {
		return -1
	}
	bk := binary.BigEndian.Uint64(tag[:8]) >> c.shift
	lo, hi := int(c.index[bk]), int(c.index[bk+1]) // the bucket: [lo, hi)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		switch bytes.Compare(c.entries[m*EntryLen:m*EntryLen+TagLen], tag) {
		case 0:
			return m
		case -1:
			lo = m + 1
		default:
			hi = m
		}
	}
	return -1
}

// buildIndex fills index with buckets of about eight entries (tags are
// HMAC outputs, uniform), at most 2^20 of them.
func (c *Cache) buildIndex() {
	n := c.Len()
	if n == 0 {
		return
	}
	b := min(max(bits.Len(uint(n/8)), 1), 20)
	c.shift = uint(64 - b)
	c.index = make([]uint32, 1<<b+1)
	e := 0
	for bk := range 1 << b {
		c.index[bk] = uint32(e)
		for e < n && c.key(e)>>c.shift == uint64(bk) {
			e++
		}
	}
	c.index[1<<b] = uint32(n)
}

// key is entry i's tag's first 8 bytes.
func (c *Cache) key(i int) uint64 { return binary.BigEndian.Uint64(c.entries[i*EntryLen:]) }

// Close releases the mapping; the identifiers Lookup returned are invalid
// after it.
func (c *Cache) Close() error {
	if c == nil || c.unmap == nil {
		return nil
	}
	err := c.unmap()
	c.unmap, c.entries = nil, nil
	return err
}

// Empty is a cache with no entries.
func Empty() *Cache { return &Cache{} }

// Open opens the cache at path for keyID under key. A missing file is an
// empty cache. A file that is not to be trusted (package documentation) is
// removed and gives an empty cache with the reason, for the run's log; err
// is for failures to read or remove it.
func Open(path string, key Key, keyID string) (c *Cache, discarded string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Empty(), "", nil
	}
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	why, err := check(f, key, keyID)
	if err != nil {
		return nil, "", fmt.Errorf("identifier cache %s: %w", path, err)
	}
	if why != "" {
		if err := os.Remove(path); err != nil {
			return nil, "", fmt.Errorf("identifier cache %s: remove it (%s): %w", path, why, err)
		}
		return Empty(), why, nil
	}
	st, _ := f.Stat()
	data, unmap, err := mapFile(f, st.Size())
	if err != nil {
		return nil, "", fmt.Errorf("identifier cache %s: %w", path, err)
	}
	c = &Cache{entries: data[headerLen : len(data)-macLen], unmap: unmap}
	c.used = make([]atomic.Uint64, (c.Len()+63)/64)
	c.buildIndex()
	return c, "", nil
}

// check returns why the open file f is not to be trusted, or "".
func check(f *os.File, key Key, keyID string) (string, error) {
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o077 != 0 {
		return fmt.Sprintf("not an owner-only regular file (mode %v)", st.Mode()), nil
	}
	size := st.Size()
	var head [headerLen]byte
	if size < headerLen+macLen {
		return "shorter than its header", nil
	}
	if _, err := f.ReadAt(head[:], 0); err != nil {
		return "", err
	}
	want := version + " " + keyID + "\n"
	if !keyIDRE.MatchString(keyID) {
		return "", fmt.Errorf("key_id %q is not 16 hex digits", keyID)
	}
	if string(head[:len(want)]) != want {
		if bytes.HasPrefix(head[:], []byte(version+" ")) {
			return "it holds the identifiers of another key_id (the key was rotated)", nil
		}
		return "not a version 1 identifier cache", nil
	}
	count := binary.BigEndian.Uint64(head[len(want):])
	if count >= 1<<32 { // the index counts entries in 32 bits
		return fmt.Sprintf("%d entries: more than a cache holds", count), nil
	}
	if count > uint64(size)/EntryLen || int64(count)*EntryLen != size-headerLen-macLen {
		return fmt.Sprintf("%d bytes do not hold the %d entries its header names", size, count), nil
	}
	mac := hmac.New(sha256.New, key[:])
	if _, err := io.Copy(mac, io.NewSectionReader(f, 0, size-macLen)); err != nil {
		return "", err
	}
	var got [macLen]byte
	if _, err := f.ReadAt(got[:], size-macLen); err != nil {
		return "", err
	}
	if !hmac.Equal(got[:], mac.Sum(nil)) {
		return "its MAC does not match its contents under this key", nil
	}
	return "", nil
}

// Builder collects the entries of the next cache (package documentation).
type Builder struct {
	sp *spill.Spill
}

// NewBuilder starts a cache in a spill at path (in the run's staging).
func NewBuilder(path string) (*Builder, error) {
	sp, err := spill.New(path, 256, spill.Options{})
	if err != nil {
		return nil, err
	}
	return &Builder{sp: sp}, nil
}

// Writer is one goroutine's writer (see spill.Writer): Add, then Flush.
type Writer struct{ w *spill.Writer }

// Writer returns a writer for one goroutine.
func (b *Builder) Writer() *Writer { return &Writer{w: b.sp.Writer()} }

// Add records that tag has identifier id (64 bytes).
func (w *Writer) Add(tag *[TagLen]byte, id []byte) {
	p := int(tag[0])
	w.w.Put(p, append(append(w.w.Buf(p), tag[:]...), id...))
}

// Flush writes what the writer holds; every writer flushes before Write.
func (w *Writer) Flush() error { return w.w.Flush() }

// Drop removes the builder's spill.
func (b *Builder) Drop() { b.sp.Drop() }

// DeltaSuffix names the delta file beside a cache file (package
// documentation).
const DeltaSuffix = ".delta"

// Set is a cache file and its delta, looked up together.
type Set struct{ Base, Delta *Cache }

// EmptySet is a set with no entries.
func EmptySet() *Set { return &Set{Base: Empty(), Delta: Empty()} }

// OpenSet opens the cache at path and its delta (Open): a base that is not
// to be trusted discards the delta with it; a delta alone may be discarded.
// discarded holds the reasons, for the run's log.
func OpenSet(path string, key Key, keyID string) (s *Set, discarded []string, err error) {
	base, why, err := Open(path, key, keyID)
	if err != nil {
		return nil, nil, err
	}
	if why != "" {
		discarded = append(discarded, why)
	}
	if base.Len() == 0 {
		if err := os.Remove(path + DeltaSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, nil, err
		}
		return &Set{Base: base, Delta: Empty()}, discarded, nil
	}
	delta, why, err := Open(path+DeltaSuffix, key, keyID)
	if err != nil {
		base.Close()
		return nil, nil, err
	}
	if why != "" {
		discarded = append(discarded, "delta: "+why)
	}
	return &Set{Base: base, Delta: delta}, discarded, nil
}

// Lookup is the base's Lookup, then the delta's.
func (s *Set) Lookup(tag *[TagLen]byte) []byte {
	if id := s.Base.Lookup(tag); id != nil {
		return id
	}
	return s.Delta.Lookup(tag)
}

// Len is the number of entries of both files.
func (s *Set) Len() int { return s.Base.Len() + s.Delta.Len() }

// Close closes both files.
func (s *Set) Close() error { return errors.Join(s.Base.Close(), s.Delta.Close()) }

// maxStale is the share of the base that may be entries no run looked up
// lately, or the delta, before Write compacts them into a new base.
const maxStale = 20 // 1/20: 5%

// Write writes the next cache at path for keyID under key (package
// documentation): old's entries that Lookup found and the collected new
// ones. When they differ from old's by at most a twentieth of its base, it
// writes them beside the base as its delta and keeps the base (whose
// unused entries stay until then); otherwise it writes a new base, without
// a delta. It returns how many entries the cache holds, and whether it
// wrote a file (a run that found every entry and added none writes none).
func (b *Builder) Write(path string, key Key, keyID string, old *Set) (int64, bool, error) {
	if !keyIDRE.MatchString(keyID) {
		return 0, false, fmt.Errorf("key_id %q is not 16 hex digits", keyID)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return 0, false, err
	}
	// The count leads the entries, so the new ones are sorted, and their
	// duplicates (two holders of a number) counted, before a file is
	// written: a pass that keeps only the counts.
	var added int
	var buf []byte
	for p := range b.sp.Parts() {
		var err error
		if buf, err = b.sp.AppendPart(buf[:0], p); err != nil {
			return 0, false, err
		}
		added += len(sortEntries(buf))
	}
	baseN, baseUsed := old.Base.Len(), int(old.Base.usedCount())
	deltaKept := 0 // the delta's entries found, and not in the base (a compaction interrupted before it removed the delta)
	for i := range old.Delta.Len() {
		if old.Delta.isUsed(i) && old.Base.find(old.Delta.tag(i)) < 0 {
			deltaKept++
		}
	}
	if added == 0 && baseUsed == baseN && deltaKept == old.Delta.Len() {
		return int64(baseN + deltaKept), false, nil
	}
	if baseN > 0 && (baseN-baseUsed)+deltaKept+added <= baseN/maxStale {
		n := deltaKept + added
		return int64(baseN + n), true, b.writeFile(path+DeltaSuffix, key, keyID, n, nil, old)
	}
	n := baseUsed + deltaKept + added
	if err := b.writeFile(path, key, keyID, n, old.Base, old); err != nil {
		return 0, false, err
	}
	if err := os.Remove(path + DeltaSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, false, err
	}
	return int64(n), true, fsutil.SyncDir(filepath.Dir(path))
}

// writeFile writes a cache file of n entries at path: base's used entries
// (base may be nil), old's delta's used entries that are not in old's base,
// and the builder's new ones, in tag order.
func (b *Builder) writeFile(path string, key Key, keyID string, n int, base *Cache, old *Set) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	mac := hmac.New(sha256.New, key[:])
	w := &macWriter{f: f, mac: mac, buf: make([]byte, 0, 1<<20)}
	w.write([]byte(version + " " + keyID + "\n"))
	w.write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	written := 0
	var buf []byte
	var es [][]byte
	bi, di := 0, 0 // the next entries of base and of old's delta
	for p := range b.sp.Parts() {
		if buf, err = b.sp.AppendPart(buf[:0], p); err != nil {
			f.Close()
			return err
		}
		es = append(es[:0], sortEntries(buf)...)
		for ; base != nil && bi < base.Len() && int(base.tag(bi)[0]) == p; bi++ {
			if base.isUsed(bi) {
				es = append(es, base.entry(bi))
			}
		}
		d := old.Delta
		for ; di < d.Len() && int(d.tag(di)[0]) == p; di++ {
			if d.isUsed(di) && old.Base.find(d.tag(di)) < 0 {
				es = append(es, d.entry(di))
			}
		}
		// Mostly sorted runs: pdqsort takes them in about linear time.
		slices.SortFunc(es, func(a, b []byte) int { return bytes.Compare(a[:TagLen], b[:TagLen]) })
		for _, e := range es {
			w.write(e)
		}
		written += len(es)
	}
	if written != n {
		f.Close()
		return fmt.Errorf("identifier cache: %d entries counted, %d to write", n, written)
	}
	w.flush()
	if w.err == nil {
		_, w.err = f.Write(mac.Sum(nil))
	}
	if w.err == nil {
		w.err = f.Sync()
	}
	if err := errors.Join(w.err, f.Close()); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return fsutil.SyncDir(dir)
}

func (c *Cache) entry(i int) []byte { return c.entries[i*EntryLen : (i+1)*EntryLen] }
func (c *Cache) tag(i int) []byte   { return c.entries[i*EntryLen : i*EntryLen+TagLen] }
func (c *Cache) isUsed(i int) bool  { return c.used[i/64].Load()&(1<<(i%64)) != 0 }

// usedCount is how many entries Lookup found.
func (c *Cache) usedCount() uint64 {
	var n uint64
	for i := range c.used {
		n += uint64(bits.OnesCount64(c.used[i].Load()))
	}
	return n
}

// sortEntries sorts a partition's entries by tag and drops repeats (a
// number two users hold is looked up twice).
func sortEntries(buf []byte) [][]byte {
	es := make([][]byte, 0, len(buf)/EntryLen)
	for i := 0; i+EntryLen <= len(buf); i += EntryLen {
		es = append(es, buf[i:i+EntryLen])
	}
	slices.SortFunc(es, func(a, b []byte) int { return bytes.Compare(a[:TagLen], b[:TagLen]) })
	return slices.CompactFunc(es, func(a, b []byte) bool { return bytes.Equal(a[:TagLen], b[:TagLen]) })
}

// macWriter writes through a buffer into f and the MAC.
type macWriter struct {
	f   *os.File
	mac hash.Hash
	buf []byte
	err error
}

func (w *macWriter) write(b []byte) {
	w.mac.Write(b)
	w.buf = append(w.buf, b...)
	if len(w.buf) >= 1<<20 {
		w.flush()
	}
}

func (w *macWriter) flush() {
	if w.err == nil && len(w.buf) > 0 {
		_, w.err = w.f.Write(w.buf)
	}
	w.buf = w.buf[:0]
}
