package pipeline

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
)

// leakGuard is the last check before publishing: nothing of the inputs'
// personal data may be in what the destination receives. It holds 64-bit
// hashes of every phone string as typed, every E.164 string and every user
// id of the run (not the strings themselves), and checks the files to
// publish:
//
//   - Parquet files have exactly the contract's column, id, of the scheme's
//     type, and no key-value metadata but the scheme and key_id;
//   - every id has the scheme's exact shape and is not itself one of those
//     strings;
//   - no such string of 8 bytes or more occurs anywhere in the raw bytes of
//     any file (metadata, footers, the manifest), found with a streaming scan.
//     Strings made only of 0-9 and a-f are left to the exact check: they would
//     match hex identifiers by chance, often, at a billion users.
type leakGuard struct {
	seed   maphash.Seed
	exact  map[uint64]struct{}
	prefix map[uint64]needle   // by the needle's first 8 bytes: almost always one
	more   map[uint64][]needle // the rare second, third... needle of a prefix
	maxLen int
}

type needle struct {
	n    int
	hash uint64
}

const guardPrefix = 8

func newLeakGuard() *leakGuard {
	return &leakGuard{seed: maphash.MakeSeed(), exact: map[uint64]struct{}{}, prefix: map[uint64]needle{}, more: map[uint64][]needle{}}
}

// Add registers a string that must not be published.
func (g *leakGuard) Add(s string) {
	for _, v := range []string{s, strings.TrimSpace(s)} {
		if v == "" {
			continue
		}
		h := maphash.String(g.seed, v)
		if _, dup := g.exact[h]; dup {
			continue
		}
		g.exact[h] = struct{}{}
		if len(v) < guardPrefix || strings.Trim(v, "0123456789abcdef") == "" {
			continue
		}
		p := binary.LittleEndian.Uint64([]byte(v[:guardPrefix]))
		if _, taken := g.prefix[p]; taken {
			g.more[p] = append(g.more[p], needle{n: len(v), hash: h})
		} else {
			g.prefix[p] = needle{n: len(v), hash: h}
		}
		g.maxLen = max(g.maxLen, len(v))
	}
}

// LeakError names what the guard found, never the value itself.
type LeakError struct{ File, What string }

func (e *LeakError) Error() string {
	return fmt.Sprintf("leak guard: %s: %s; nothing published", e.File, e.What)
}

// Check scans every file under dir.
func (g *leakGuard) Check(dir string, scheme hashing.Scheme, removesScheme hashing.Scheme) error {
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
		if _, hit := g.exact[maphash.Bytes(g.seed, id)]; hit {
			return &LeakError{rel, fmt.Sprintf("row %d: id equals a phone number or user id of the input", i)}
		}
	}
	return nil
}

// scanRaw streams the file's bytes, looking every 8-byte window up among the
// needles' prefixes; windows overlap between chunks so nothing is missed.
func (g *leakGuard) scanRaw(path, rel string) error {
	if len(g.prefix) == 0 {
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
			first, ok := g.prefix[p]
			if !ok {
				continue
			}
			for _, nd := range append([]needle{first}, g.more[p]...) {
				if i+nd.n <= len(buf) && maphash.Bytes(g.seed, buf[i:i+nd.n]) == nd.hash {
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
