package pipeline

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
)

// leakGuard is the last check before publishing: nothing of the inputs'
// personal data may be in what the destination receives. It holds 64-bit
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
// Add only appends; the index is sorted once, when Check needs it.
type leakGuard struct {
	salt   uint64
	state  uint64   // saltState(salt)
	exact  []uint64 // hashes of the strings that couldBeID; sorted and deduplicated by seal
	pre    []needle // needles of 8 bytes or more; sorted by prefix by seal
	maxLen int
	sealed bool
	// Add appends here; flush moves them to exact and pre.
	newExact chunked[uint64]
	newPre   chunked[needle]
	filter   []uint64 // a bit per bucket of prefixes: most windows miss it
}

const filterBits = 24

func filterSlot(p uint64) uint64 { return (p * 0x9e3779b97f4a7c15) >> (64 - filterBits) }

type needle struct {
	prefix uint64 // the first 8 bytes, little-endian
	hash   uint64
	n      int32
}

const guardPrefix = 8

// newLeakGuard's salt comes from the run's key (cutoff and configuration),
// the same for every shard of a run.
func newLeakGuard(salt uint64) *leakGuard { return &leakGuard{salt: salt, state: saltState(salt)} }

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

// Add registers a string that must not be published.
func (g *leakGuard) Add(s string) {
	g.add(s)
	if t := strings.TrimSpace(s); t != s {
		g.add(t)
	}
}

func (g *leakGuard) add(v string) {
	if v == "" {
		return
	}
	g.sealed = false
	h := guardHashFrom(g.state, v)
	if couldBeID(len(v)) {
		g.newExact.add(h)
	}
	if len(v) < guardPrefix || lowerHex(v) {
		return
	}
	g.newPre.add(needle{prefix: binary.LittleEndian.Uint64([]byte(v[:guardPrefix])), hash: h, n: int32(len(v))})
	g.maxLen = max(g.maxLen, len(v))
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
// Only those can equal a published id, so only those need an exact hash:
// the exact index stays small whatever the number of users.
func couldBeID(n int) bool { return slices.Contains(idLens, n) }

var idLens = func() (lens []int) {
	for _, s := range hashing.Schemes() {
		lens = append(lens, s.IDLen())
	}
	return lens
}()

// flush moves the needles added since the last flush into exact and pre.
func (g *leakGuard) flush() {
	g.exact = g.newExact.moveTo(g.exact)
	g.pre = g.newPre.moveTo(g.pre)
}

// merge adds another guard's needles (a shard's); both must share the salt.
func (g *leakGuard) merge(o *leakGuard) {
	g.newExact.take(&o.newExact, o.exact)
	g.newPre.take(&o.newPre, o.pre)
	o.exact, o.pre = nil, nil
	g.maxLen = max(g.maxLen, o.maxLen)
	g.sealed = false
}

// seal sorts the index for lookups.
func (g *leakGuard) seal() {
	if g.sealed {
		return
	}
	g.flush()
	workers := runtime.GOMAXPROCS(0)
	parallelSort(g.exact, workers, cmp.Compare[uint64])
	g.exact = slices.Compact(g.exact)
	// By prefix only: equal prefixes stay side by side, which is all
	// candidates needs; a repeated needle costs a repeated comparison.
	parallelSort(g.pre, workers, func(a, b needle) int { return cmp.Compare(a.prefix, b.prefix) })
	g.filter = make([]uint64, 1<<filterBits/64)
	for _, n := range g.pre {
		b := filterSlot(n.prefix)
		g.filter[b/64] |= 1 << (b % 64)
	}
	g.sealed = true
}

func (g *leakGuard) hasExact(b []byte) bool {
	_, found := slices.BinarySearch(g.exact, guardHashFrom(g.state, b))
	return found
}

// candidates returns the needles whose first 8 bytes are p.
func (g *leakGuard) candidates(p uint64) []needle {
	if b := filterSlot(p); g.filter[b/64]&(1<<(b%64)) == 0 {
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

// Check scans every file under dir.
func (g *leakGuard) Check(dir string, scheme hashing.Scheme, removesScheme hashing.Scheme) error {
	g.seal()
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
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
			return g.checkParquet(p, rel, sc)
		}
		return nil
	})
}

func (g *leakGuard) checkParquet(path, rel string, scheme hashing.Scheme) error {
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
	ids, err := ReadPublishedIDs(path, scheme)
	if err != nil {
		return &LeakError{rel, err.Error()}
	}
	for i, id := range ids {
		if !scheme.ValidID(id) {
			return &LeakError{rel, fmt.Sprintf("row %d: id does not have the exact shape of %s", i, scheme)}
		}
		if g.hasExact(id) {
			return &LeakError{rel, fmt.Sprintf("row %d: id equals a phone number or user id of the input", i)}
		}
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
			for _, nd := range g.candidates(binary.LittleEndian.Uint64(buf[i:])) {
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
