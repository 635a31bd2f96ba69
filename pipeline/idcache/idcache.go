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
	"os"
	"path/filepath"
	"regexp"
	"slices"

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
}

// Len is the number of entries.
func (c *Cache) Len() int { return len(c.entries) / EntryLen }

// Lookup returns the identifier cached under tag, or nil. The slice is the
// cache's: valid until Close, not to be changed.
func (c *Cache) Lookup(tag *[TagLen]byte) []byte {
	n := c.Len()
	lo, hi := 0, n
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		e := c.entries[m*EntryLen : m*EntryLen+TagLen]
		switch bytes.Compare(e, tag[:]) {
		case 0:
			return c.entries[m*EntryLen+TagLen : (m+1)*EntryLen : (m+1)*EntryLen]
		case -1:
			lo = m + 1
		default:
			hi = m
		}
	}
	return nil
}

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

// Write writes the collected entries as the cache at path for keyID under
// key, replacing any file there durably, and returns how many it holds.
func (b *Builder) Write(path string, key Key, keyID string) (int64, error) {
	if !keyIDRE.MatchString(keyID) {
		return 0, fmt.Errorf("key_id %q is not 16 hex digits", keyID)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	// The count leads the entries, so the partitions are sorted, and their
	// duplicates (two holders of a number) counted, before the file is
	// written: a pass that keeps only the counts.
	var count uint64
	var buf []byte
	for p := range b.sp.Parts() {
		var err error
		if buf, err = b.sp.AppendPart(buf[:0], p); err != nil {
			return 0, err
		}
		count += uint64(len(sortEntries(buf)))
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	mac := hmac.New(sha256.New, key[:])
	w := &macWriter{f: f, mac: mac, buf: make([]byte, 0, 1<<20)}
	w.write([]byte(version + " " + keyID + "\n"))
	w.write(binary.BigEndian.AppendUint64(nil, count))
	for p := range b.sp.Parts() {
		if buf, err = b.sp.AppendPart(buf[:0], p); err != nil {
			f.Close()
			return 0, err
		}
		for _, e := range sortEntries(buf) {
			w.write(e)
		}
	}
	w.flush()
	if w.err == nil {
		_, w.err = f.Write(mac.Sum(nil))
	}
	if w.err == nil {
		w.err = f.Sync()
	}
	if err := errors.Join(w.err, f.Close()); err != nil {
		return 0, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return 0, err
	}
	return int64(count), fsutil.SyncDir(dir)
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
