// Package parquettest edits Parquet files byte by byte, for tests that
// plant what a writer would never write (a value in a footer field, a
// statistic, a page) and check that a reader or the leak guard refuses it.
package parquettest

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"
)

// ReplaceFirst replaces the first old in b at or after byte from with new,
// of the same length.
func ReplaceFirst(t testing.TB, b, old, new []byte, from int64) []byte {
	t.Helper()
	i := bytes.Index(b[from:], old)
	if i < 0 || len(old) != len(new) {
		t.Fatalf("nothing to replace")
	}
	b = bytes.Clone(b)
	copy(b[int(from)+i:], new)
	return b
}

// FooterOf decodes the footer of the Parquet file b.
func FooterOf(t testing.TB, b []byte) *format.FileMetaData {
	t.Helper()
	pf, err := parquet.OpenFile(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	md := *pf.Metadata()
	return &md
}

// WithFooter replaces the footer of the Parquet file b with what edit
// makes of its bytes.
func WithFooter(b []byte, edit func(footer []byte) []byte) []byte {
	n := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
	at := len(b) - 8 - n
	footer := edit(bytes.Clone(b[at : len(b)-8]))
	out := append(bytes.Clone(b[:at]), footer...)
	return append(binary.LittleEndian.AppendUint32(out, uint32(len(footer))), "PAR1"...)
}

// PatchFooter re-encodes the footer of the Parquet file b as patch edits
// it.
func PatchFooter(t testing.TB, b []byte, patch func(md *format.FileMetaData)) []byte {
	t.Helper()
	md := FooterOf(t, b)
	patch(md)
	footer, err := thrift.Marshal(new(thrift.CompactProtocol), md)
	if err != nil {
		t.Fatal(err)
	}
	return WithFooter(b, func([]byte) []byte { return footer })
}
