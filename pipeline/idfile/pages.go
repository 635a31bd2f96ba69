package idfile

import (
	"audiencematch/hashing"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding"
)

// ReadPublishedIDs reads one published part's identifiers as leaf bytes.
func ReadPublishedIDs(path string, scheme hashing.Scheme) ([][]byte, error) {
	var out [][]byte
	err := EachPublishedID(path, scheme, func(_ int64, id []byte) bool {
		out = append(out, bytes.Clone(id))
		return true
	})
	return out, err
}

// EachPublishedID streams one published part's identifiers to fn, which
// must not keep id, until fn returns false.
func EachPublishedID(path string, scheme hashing.Scheme, fn func(i int64, id []byte) bool) error {
	r, err := OpenPages(path, scheme)
	if err != nil {
		return err
	}
	defer r.Close()
	i := int64(0)
	for {
		data, offs, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for k := range r.Count(data, offs) {
			if !fn(i, r.Value(data, offs, k)) {
				return nil
			}
			i++
		}
	}
}

// Pages reads a published part's identifiers a page at a time, decoding
// the column's pages itself: several times faster than parquet-go's row
// reader, which reconstructs every row. So it accepts only the shape the
// part writer produces: one required column "id", FIXED_LEN_BYTE_ARRAY(IDLen)
// in a binary scheme and BYTE_ARRAY otherwise, with no dictionary and no
// nulls; anything else is an error, never a silently skipped value.
type Pages struct {
	f     *os.File
	path  string
	size  int // the id's length in a binary scheme, else 0
	rgs   []parquet.RowGroup
	pages parquet.Pages
	page  parquet.Page // handed out by next, released by the one after
	row   int64        // the ids of the pages handed out so far
}

// OpenPages opens a published part of scheme, checking its schema.
func OpenPages(path string, scheme hashing.Scheme) (*Pages, error) {
	f, pf, err := openParquet(path)
	if err != nil {
		return nil, err
	}
	r := &Pages{f: f, path: path}
	if err := r.open(pf, scheme); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func (r *Pages) open(pf *parquet.File, scheme hashing.Scheme) error {
	kind, want := parquet.ByteArray, "BYTE_ARRAY"
	if scheme.Binary() {
		r.size = scheme.IDLen()
		kind, want = parquet.FixedLenByteArray, fmt.Sprintf("FIXED_LEN_BYTE_ARRAY(%d)", r.size)
	}
	cols := pf.Schema().Fields()
	if len(cols) != 1 || cols[0].Name() != "id" || !cols[0].Leaf() || !cols[0].Required() ||
		cols[0].Type().Kind() != kind || (r.size > 0 && cols[0].Type().Length() != r.size) {
		return fmt.Errorf("%s: not the schema of a %s part: want one required column id of %s", r.path, scheme, want)
	}
	r.rgs = pf.RowGroups()
	return nil
}

// Groups is the number of row groups left to read.
func (r *Pages) Groups() int { return len(r.rgs) }

// Only restricts the reader to row group k, before the first next.
func (r *Pages) Only(k int) { r.rgs = r.rgs[k : k+1] }

// Next returns the next page's values: the ids end to end, and in a text
// scheme their offsets (one more than the ids). They are valid until the
// next call. It returns io.EOF after the last page.
func (r *Pages) Next() (data []byte, offs []uint32, err error) {
	r.release()
	for {
		if r.pages == nil {
			if len(r.rgs) == 0 {
				return nil, nil, io.EOF
			}
			r.pages, r.rgs = r.rgs[0].ColumnChunks()[0].Pages(), r.rgs[1:]
		}
		p, err := r.pages.ReadPage()
		if err == io.EOF {
			r.pages.Close()
			r.pages = nil
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", r.path, err)
		}
		r.page = p
		if data, offs, err = r.values(p); err != nil {
			return nil, nil, fmt.Errorf("%s: page at row %d: %w", r.path, r.row, err)
		}
		r.row += p.NumValues()
		return data, offs, nil
	}
}

func (r *Pages) values(p parquet.Page) (data []byte, offs []uint32, err error) {
	if p.Dictionary() != nil || p.NumNulls() != 0 {
		return nil, nil, errors.New("dictionary-encoded or with nulls")
	}
	v := p.Data()
	switch {
	case r.size > 0 && v.Kind() == encoding.FixedLenByteArray:
		data, n := v.FixedLenByteArray()
		if n != r.size || len(data)%r.size != 0 || int64(len(data)/r.size) != p.NumValues() {
			return nil, nil, fmt.Errorf("%d bytes of %d-byte values for %d values", len(data), n, p.NumValues())
		}
		return data, nil, nil
	case r.size == 0 && v.Kind() == encoding.ByteArray:
		data, offs := v.ByteArray()
		if int64(len(offs)) != p.NumValues()+1 {
			return nil, nil, fmt.Errorf("%d offsets for %d values", len(offs), p.NumValues())
		}
		for k := 1; k < len(offs); k++ {
			if offs[k-1] > offs[k] || int(offs[k]) > len(data) {
				return nil, nil, errors.New("bad value offsets")
			}
		}
		return data, offs, nil
	}
	return nil, nil, fmt.Errorf("values of encoding kind %d", v.Kind())
}

// Count is the number of ids in a page Next returned.
func (r *Pages) Count(data []byte, offs []uint32) int {
	if r.size > 0 {
		return len(data) / r.size
	}
	return len(offs) - 1
}

// Value is the k-th id of a page Next returned.
func (r *Pages) Value(data []byte, offs []uint32, k int) []byte {
	if r.size > 0 {
		return data[k*r.size : (k+1)*r.size : (k+1)*r.size]
	}
	return data[offs[k]:offs[k+1]:offs[k+1]]
}

func (r *Pages) release() {
	if r.page != nil {
		parquet.Release(r.page)
		r.page = nil
	}
}

// Close releases the page handed out last and closes the file.
func (r *Pages) Close() error {
	r.release()
	if r.pages != nil {
		r.pages.Close()
		r.pages = nil
	}
	return r.f.Close()
}
