package pipeline

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
)

// maxRecordBytes bounds one CSV line; a longer one is rejected.
const maxRecordBytes = 64 << 10

// CSV reject reasons.
const (
	RejectBrokenQuoting = "broken_csv_quoting"
	RejectFieldCount    = "wrong_field_count"
	RejectRecordTooLong = "record_too_long"
)

// csvTable reads RFC 4180 CSV, one record per physical line, and survives
// malformed rows: a line that fails to parse is rejected and reading goes on
// with the next line.
//
// RFC 4180 lets a quoted field span lines, but no column of the contract can
// hold a line break, and honouring it is how one broken row loses thousands:
// an unterminated quote runs on until some later quote closes it, and every
// line in between becomes part of one field (encoding/csv, and arrow's CSV
// reader built on it, then read the rest of the file as one row or fail).
// So a quote still open at the end of a line is broken quoting, and the row
// count is the line count.
type csvTable struct {
	br     *bufio.Reader
	sum    hash.Hash
	digest string
	next   int64 // number of the next physical line
	ncols  int
	idx    []int
	row    Row
	fields []string
	buf    []byte
	line   []byte
	closer io.Closer
}

var errRecord = errors.New("malformed record")

func newCSVTable(rc io.ReadCloser, columns []string) (*csvTable, error) {
	t := &csvTable{sum: sha256.New(), next: 1, closer: rc}
	t.br = bufio.NewReaderSize(io.TeeReader(rc, t.sum), 1<<20)
	header, err := t.readHeader()
	if err != nil {
		return nil, err
	}
	t.ncols = len(header)
	if t.idx, err = columnIndex(header, columns); err != nil {
		return nil, err
	}
	t.row.Fields = make([]string, len(columns))
	return t, nil
}

func (t *csvTable) readHeader() ([]string, error) {
	for {
		n, text, tooLong, err := t.readLine()
		if err == io.EOF {
			return nil, fmt.Errorf("%w: the file is empty; a CSV input needs a header row", ErrConfig)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoInput, err)
		}
		text = bytes.TrimPrefix(text, []byte("\xef\xbb\xbf"))
		if len(text) == 0 {
			continue
		}
		fields, perr := t.parse(text)
		if perr != nil || tooLong {
			return nil, fmt.Errorf("%w: the header row (line %d) is not valid CSV", ErrConfig, n)
		}
		return append([]string(nil), fields...), nil
	}
}

// readLine returns the next physical line without its line ending. A line
// longer than maxRecordBytes is cut there and reported as too long.
func (t *csvTable) readLine() (n int64, text []byte, tooLong bool, err error) {
	t.line = t.line[:0]
	for {
		chunk, rerr := t.br.ReadSlice('\n')
		if len(t.line)+len(chunk) <= maxRecordBytes+2 {
			t.line = append(t.line, chunk...)
		} else {
			tooLong = true
		}
		if rerr == bufio.ErrBufferFull {
			continue
		}
		if rerr == io.EOF && len(t.line) == 0 && !tooLong {
			return 0, nil, false, io.EOF
		}
		if rerr != nil && rerr != io.EOF {
			return 0, nil, false, rerr
		}
		break
	}
	n = t.next
	t.next++
	text = bytes.TrimSuffix(t.line, []byte("\n"))
	return n, bytes.TrimSuffix(text, []byte("\r")), tooLong, nil
}

// parse splits one line into fields, RFC 4180 style: a field is either
// unquoted (no quotes in it) or quoted, with "" for a quote, followed by a
// comma or the end of the line.
func (t *csvTable) parse(text []byte) ([]string, error) {
	t.fields = t.fields[:0]
	i := 0
	for {
		t.buf = t.buf[:0]
		if i < len(text) && text[i] == '"' {
			i++
			for {
				j := bytes.IndexByte(text[i:], '"')
				if j < 0 {
					return nil, errRecord // still open at the end of the line
				}
				t.buf = append(t.buf, text[i:i+j]...)
				i += j + 1
				if i < len(text) && text[i] == '"' {
					t.buf = append(t.buf, '"')
					i++
					continue
				}
				break
			}
			if i < len(text) && text[i] != ',' {
				return nil, errRecord
			}
		} else {
			end := len(text)
			if j := bytes.IndexByte(text[i:], ','); j >= 0 {
				end = i + j
			}
			if bytes.IndexByte(text[i:end], '"') >= 0 {
				return nil, errRecord
			}
			t.buf = append(t.buf, text[i:end]...)
			i = end
		}
		t.fields = append(t.fields, string(t.buf))
		if i >= len(text) {
			return t.fields, nil
		}
		i++ // the comma
		if i == len(text) {
			return append(t.fields, ""), nil
		}
	}
}

func (t *csvTable) Next() (*Row, error) {
	for {
		n, text, tooLong, err := t.readLine()
		if err == io.EOF {
			t.digest = hex.EncodeToString(t.sum.Sum(nil))
			return nil, io.EOF
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read error at line %d: %w", ErrNoInput, t.next, err)
		}
		if len(text) == 0 && !tooLong {
			continue // a blank line carries no row
		}
		t.row.Line, t.row.Reject, t.row.Raw = n, "", ""
		fields, perr := t.parse(text)
		switch {
		case tooLong:
			t.row.Reject = RejectRecordTooLong
		case perr != nil:
			t.row.Reject = RejectBrokenQuoting
		case len(fields) != t.ncols:
			t.row.Reject = RejectFieldCount
		default:
			for i, p := range t.idx {
				t.row.Fields[i] = fields[p]
			}
			return &t.row, nil
		}
		t.row.Raw = string(text)
		return &t.row, nil
	}
}

func (t *csvTable) Digest() string { return t.digest }
func (t *csvTable) Close() error   { return t.closer.Close() }
