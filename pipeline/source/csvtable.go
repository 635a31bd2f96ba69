package source

import (
	"audiencematch/pipeline/errkind"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/bits"
	"strings"
	"sync"
	"unicode/utf8"
	"unsafe"
)

// maxRecordBytes bounds one CSV line; a longer one is rejected.
const maxRecordBytes = 64 << 10

// csvBlockSize is how much of the file one parse worker takes at a time
// (a variable for tests, which make it tiny to cut files into many blocks).
// The blocks in flight and the row arrays sized for them are most of the
// read stages' memory, and fresh memory is dear to touch: blocks stay
// small enough to be recycled (Release) from a few buffers, large enough
// that a worker parses a while between two turns at the reader (figures in
// docs/PERFORMANCE.md).
var csvBlockSize = 512 << 10

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
//
// That rule also makes the file splittable: one goroutine reads and hashes
// it in blocks of whole lines, numbering them, and any number of workers
// parse blocks in parallel (NextBatch). A block is converted to one string,
// and fields are substrings of it: a field allocates only when it has a
// doubled quote to undo.
type csvTable struct {
	ncols  int
	idx    []int
	blocks chan csvBlock
	stop   chan struct{}
	once   sync.Once
	closer io.Closer
	// free holds block buffers parsed batches are done with (see Release).
	free chan []byte
	// Set by the reader goroutine before it closes blocks.
	digest string
	err    error
	rows   batchCursor // Next's
	// quoted is set for CSV a program wrote, whose quotes are always
	// closed (NewCopyReader): a line break inside quotes is data, a record
	// ends at a line break outside quotes, and lines count records.
	quoted bool
}

// csvBlock is a run of whole lines (of whole records, when quoted), the
// first numbered firstLine; a block with tooLong set stands for one line
// (record) longer than maxRecordBytes, dropped.
type csvBlock struct {
	seq       int
	firstLine int64
	data      []byte
	tooLong   bool
	records   int64 // when quoted: the records data ends, its line breaks being no measure of them
}

var errRecord = errors.New("malformed record")

func newCSVTable(rc io.ReadCloser, columns []string) (*csvTable, error) {
	return openCSV(rc, columns, false)
}

// NewCopyReader streams the CSV that PostgreSQL's COPY ... TO STDOUT
// (FORMAT csv, HEADER) writes, from r, as a RowReader. Unlike a file, it
// is read with its quoting: the database closes every quote it opens, so a
// line break inside quotes is part of a value (a source of
// E'support ticket\n#123' is one field, not two broken rows), and Row.Line
// is the record's number, the header being 1, as in a file of the same
// rows without line breaks in their values. The digest is the stream's
// SHA-256, as for a file.
func NewCopyReader(r io.ReadCloser, columns []string) (RowReader, error) {
	return openCSV(r, columns, true)
}

func openCSV(rc io.ReadCloser, columns []string, quoted bool) (*csvTable, error) {
	sum := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(rc, sum), 1<<16)
	header, next, err := readCSVHeader(br)
	if err != nil {
		return nil, err
	}
	t := &csvTable{ncols: len(header), closer: rc, blocks: make(chan csvBlock, 4), stop: make(chan struct{}), free: make(chan []byte, 8), quoted: quoted}
	if t.idx, err = columnIndex(header, columns); err != nil {
		return nil, err
	}
	go t.produce(br, sum, next)
	return t, nil
}

// readCSVHeader returns the first non-blank line's fields (a UTF-8 byte
// order mark removed) and the number of the line after it.
//
// Its errors say what is wrong and how to fix it, never what the file
// holds: a file given by mistake (compressed, or without its header row)
// has personal data where the header should be, and errors reach logs and
// the audit log, which is kept for good.
func readCSVHeader(br *bufio.Reader) ([]string, int64, error) {
	head, _ := br.Peek(8) // fewer at the end of a short file
	if what, fix := notCSV(head); what != "" {
		return nil, 0, fmt.Errorf("%w: the file is %s, not CSV text: %s (a CSV input is UTF-8 text with a header row, MATCHING.md section 1)", errkind.ErrConfig, what, fix)
	}
	for n := int64(1); ; n++ {
		text, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return nil, 0, fmt.Errorf("%w: the header row (line %d) is longer than %d bytes; is the file compressed, or not CSV?", errkind.ErrConfig, n, br.Size())
		}
		if err == io.EOF && len(text) == 0 && n == 1 {
			return nil, 0, fmt.Errorf("%w: the file is empty; a CSV input needs a header row", errkind.ErrConfig)
		}
		if err != nil && err != io.EOF {
			return nil, 0, fmt.Errorf("%w: %w", errkind.ErrNoInput, err)
		}
		line := strings.TrimSuffix(strings.TrimSuffix(string(text), "\n"), "\r")
		if n == 1 {
			line = strings.TrimPrefix(line, "\xef\xbb\xbf")
		}
		if line == "" {
			if err == io.EOF {
				return nil, 0, fmt.Errorf("%w: the file is empty; a CSV input needs a header row", errkind.ErrConfig)
			}
			continue
		}
		if !utf8.ValidString(line) {
			return nil, 0, fmt.Errorf("%w: the header row (line %d) is not valid UTF-8: is the file compressed, or in another encoding? CSV inputs are UTF-8 text with a header row (MATCHING.md section 1)", errkind.ErrConfig, n)
		}
		fields, perr := splitCSV(line, nil)
		if perr != nil {
			return nil, 0, fmt.Errorf("%w: the header row (line %d) is not valid CSV", errkind.ErrConfig, n)
		}
		return fields, n + 1, nil
	}
}

// notCSV names what a file is when its first bytes say it is not text (a
// compressed file or an archive given where its content was meant, or UTF-16
// text) and how to fix it; "" otherwise. A UTF-8 header row can start with
// none of these.
func notCSV(head []byte) (what, fix string) {
	for _, m := range []struct{ magic, what, fix string }{
		{"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (zstd -d FILE, or pass <(zstdcat FILE))"},
		{"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip FILE, or pass <(zcat FILE))"},
		{"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz FILE, or pass <(xzcat FILE))"},
		{"PK\x03\x04", "a ZIP archive (an .xlsx workbook?)", "export or extract the CSV"},
		{"\xff\xfe", "UTF-16 text", "save it as UTF-8"},
		{"\xfe\xff", "UTF-16 text", "save it as UTF-8"},
	} {
		if bytes.HasPrefix(head, []byte(m.magic)) {
			return m.what, m.fix
		}
	}
	return "", ""
}

// produce reads the rest of the file into blocks of whole lines. A line
// with no end in sight after maxRecordBytes is skipped up to its end and
// sent as a tooLong block, so memory stays bounded. Every block has a
// buffer of its own, never written once sent: parseBlock relies on it.
func (t *csvTable) produce(r io.Reader, sum hash.Hash, line int64) {
	defer close(t.blocks)
	send := func(b csvBlock) bool {
		select {
		case t.blocks <- b:
			return true
		case <-t.stop:
			return false
		}
	}
	var carry []byte
	skipping := false // inside a line already known to be too long
	inQuote := false  // while skipping a quoted record: inside quotes
	for seq := 0; ; {
		// At least as much again as the carried partial line: a line many
		// blocks long is then read in a logarithmic number of rounds.
		// Blocks start at 64 KiB and double up to csvBlockSize: a small
		// file does not cost a full-size buffer.
		size := min(csvBlockSize, 64<<10<<min(seq, 6))
		buf := t.blockBuf(len(carry) + max(size, len(carry)))
		buf = buf[:copy(buf[:len(carry)], carry)]
		n, err := io.ReadFull(r, buf[len(carry):cap(buf)])
		buf = buf[:len(carry)+n]
		eof := err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !eof {
			t.err = fmt.Errorf("%w: read error at line %d: %w", errkind.ErrNoInput, line, err)
			return
		}
		if skipping {
			i := -1
			if t.quoted {
				i, inQuote = recordEnd(unsafeString(buf), 0, inQuote)
			} else {
				i = bytes.IndexByte(buf, '\n')
			}
			if i < 0 && !eof {
				carry = carry[:0]
				continue
			}
			skipping = false
			if !send(csvBlock{seq: seq, firstLine: line, tooLong: true}) {
				return
			}
			seq, line = seq+1, line+1
			if i < 0 {
				buf = buf[:0]
			} else {
				buf = buf[i+1:]
			}
		}
		var cut int
		var lines int64
		if t.quoted {
			cut, lines, inQuote = records(unsafeString(buf))
		} else {
			cut = bytes.LastIndexByte(buf, '\n') + 1
		}
		if eof {
			cut = len(buf)
		}
		if cut == 0 && len(buf) > maxRecordBytes+2 {
			skipping, carry = true, carry[:0]
			continue
		}
		if cut > 0 {
			block := buf[:cut]
			if !send(csvBlock{seq: seq, firstLine: line, data: block, records: lines}) {
				return
			}
			seq++
			if !t.quoted {
				lines = int64(bytes.Count(block, []byte{'\n'}))
			}
			line += lines
		}
		if eof {
			t.digest = hex.EncodeToString(sum.Sum(nil))
			return
		}
		carry = append(carry[:0], buf[cut:]...)
	}
}

// unsafeString is b as a string, without a copy, for reading only: b must
// not change while the string is in use.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// recordEnd is the index of the first line break at or after i that ends a
// quoted CSV record (one outside quotes), or -1 if there is none; inQuote
// says whether i is inside quotes, and is returned for the end of s when
// there is no record end. A doubled quote inside quotes leaves and enters
// them again, so counting quotes is enough. The next line break is looked
// for again only once passed: a value of many doubled quotes costs its
// length, not its length times its quotes.
func recordEnd(s string, i int, inQuote bool) (int, bool) {
	nl := -1 // the first line break at or after i, once known and while nl >= i
	for {
		if inQuote {
			j := strings.IndexByte(s[i:], '"')
			if j < 0 {
				return -1, true
			}
			i, inQuote = i+j+1, false
			continue
		}
		if nl < i {
			nl = len(s)
			if j := strings.IndexByte(s[i:], '\n'); j >= 0 {
				nl = i + j
			}
		}
		j := strings.IndexByte(s[i:nl], '"')
		if j < 0 {
			if nl == len(s) {
				return -1, false
			}
			return nl, false
		}
		i, inQuote = i+j+1, true
	}
}

// records returns the end of the last whole quoted record of s (just after
// its line break; 0 if none), the number of records before it, and whether
// the end of s is inside quotes.
func records(s string) (cut int, n int64, inQuote bool) {
	for {
		end, q := recordEnd(s, cut, false)
		if end < 0 {
			return cut, n, q
		}
		cut, n = end+1, n+1
	}
}

// blockCap is the capacity of a recycled block buffer: a full block and
// the partial line carried into it.
func blockCap() int { return csvBlockSize + maxRecordBytes + 2 }

// blockBuf returns an empty buffer of capacity at least n: a recycled one
// when n fits, so that the file's blocks go through a few buffers rather
// than each faulting in fresh memory.
func (t *csvTable) blockBuf(n int) []byte {
	if n <= blockCap() && n > blockCap()/2 {
		select {
		case b := <-t.free:
			return b[:0]
		default:
			return make([]byte, 0, blockCap())
		}
	}
	return make([]byte, 0, n)
}

// Release takes back the block a batch was parsed from, once the batch is
// done with (see BatchReader).
func (t *csvTable) Release(b *Batch) {
	if cap(b.block) == blockCap() {
		select {
		case t.free <- b.block:
		default:
		}
	}
	b.block = nil
}

// NextBatch parses the next block into b; safe for concurrent use.
func (t *csvTable) NextBatch(b *Batch) error {
	blk, ok := <-t.blocks
	if !ok {
		if t.err != nil {
			return t.err
		}
		return io.EOF
	}
	t.parseBlock(blk, b)
	return nil
}

// parseBlock splits a block into rows: every non-blank line is one row or
// one reject.
func (t *csvTable) parseBlock(blk csvBlock, b *Batch) {
	b.reset(blk.seq)
	b.block = blk.data
	if blk.tooLong {
		b.Rows = append(b.Rows, Row{Line: blk.firstLine, Reject: RejectRecordTooLong})
		return
	}
	// A row a line or, quoted, a record: produce counts those, as values
	// may hold any number of line breaks.
	n := int(blk.records) + 1
	if !t.quoted {
		n = bytes.Count(blk.data, []byte{'\n'}) + 1
	}
	if cap(b.Rows) < n {
		// Room at once for a full block of lines this long: blocks grow
		// to csvBlockSize, and growing by doublings costs fresh memory
		// at each step. Not for a block of a small file, which is all
		// there is (the first block of a larger one is 64 KiB).
		if len(blk.data) >= 64<<10 {
			n = max(n, int(int64(n)*int64(csvBlockSize)/int64(len(blk.data))))
		}
		b.Rows = make([]Row, 0, n)
		b.fields = make([]string, 0, n*len(t.idx))
	}
	// The block's bytes are never written after produce sends them (each
	// block has its own buffer), so they can be a string without a copy.
	s := unsafe.String(unsafe.SliceData(blk.data), len(blk.data))
	var fields []string
	for line := blk.firstLine; len(s) > 0; line++ {
		var text, rest string
		var found bool
		if t.quoted {
			text, rest, found = s, "", false
			if end, _ := recordEnd(s, 0, false); end >= 0 {
				text, rest, found = s[:end], s[end+1:], true
			}
		} else {
			text, rest, found = strings.Cut(s, "\n")
		}
		s = rest
		size := len(text)
		if found {
			size++
		}
		if size > maxRecordBytes+2 {
			b.Rows = append(b.Rows, Row{Line: line, Reject: RejectRecordTooLong})
			continue
		}
		text = strings.TrimSuffix(text, "\r")
		if text == "" {
			continue // a blank line carries no row
		}
		var err error
		fields, err = splitCSV(text, fields[:0])
		switch {
		case err != nil:
			b.Rows = append(b.Rows, Row{Line: line, Reject: RejectBrokenQuoting, Raw: text, Fields: t.readable(text, b)})
		case len(fields) != t.ncols:
			b.Rows = append(b.Rows, Row{Line: line, Reject: RejectFieldCount, Raw: text, Fields: t.readable(text, b)})
		default:
			start := len(b.fields)
			for _, p := range t.idx {
				b.fields = append(b.fields, fields[p])
			}
			b.Rows = append(b.Rows, Row{Line: line, Fields: b.fields[start:len(b.fields):len(b.fields)]})
		}
	}
}

// readable is the requested columns of a rejected line that can still be
// read, "" for the others, or nil when none can (see Row.Reject). A column
// can be read when every field up to it is plain: unquoted, with no quote
// in it. Before the first quote nothing is ambiguous, so such a field is
// where the header says, assuming no field before it lost or gained a
// comma; past a quote, a field's extent depends on quoting that is broken.
// Rejects are rare, so this costs nothing the good rows pay for.
func (t *csvTable) readable(text string, b *Batch) []string {
	start, some := len(b.fields), false
	for _, p := range t.idx {
		f, ok := plainField(text, p)
		b.fields = append(b.fields, f)
		some = some || ok && f != ""
	}
	if !some {
		b.fields = b.fields[:start]
		return nil
	}
	return b.fields[start:len(b.fields):len(b.fields)]
}

// plainField is field n (from 0) of a line, if it and every field before it
// are plain (see readable).
func plainField(text string, n int) (string, bool) {
	i := 0
	for k := 0; ; k++ {
		end := commaOrQuote(text, i)
		if end < len(text) && text[end] == '"' {
			return "", false
		}
		if k == n {
			return text[i:end], true
		}
		if end == len(text) {
			return "", false
		}
		i = end + 1
	}
}

// splitCSV appends the fields of one line to fields, RFC 4180 style: a field
// is either unquoted (no quotes in it) or quoted, with "" for a quote,
// followed by a comma or the end of the line.
func splitCSV(text string, fields []string) ([]string, error) {
	i := 0
	for {
		if i < len(text) && text[i] == '"' {
			i++
			j := strings.IndexByte(text[i:], '"')
			if j < 0 {
				return nil, errRecord // still open at the end of the line
			}
			field := text[i : i+j]
			i += j + 1
			if i < len(text) && text[i] == '"' { // a doubled quote: unescape
				var sb strings.Builder
				sb.WriteString(field)
				for i < len(text) && text[i] == '"' {
					sb.WriteByte('"')
					i++
					j := strings.IndexByte(text[i:], '"')
					if j < 0 {
						return nil, errRecord
					}
					sb.WriteString(text[i : i+j])
					i += j + 1
				}
				field = sb.String()
			}
			if i < len(text) && text[i] != ',' {
				return nil, errRecord
			}
			fields = append(fields, field)
		} else {
			end := commaOrQuote(text, i)
			if end < len(text) && text[end] == '"' {
				return nil, errRecord
			}
			fields = append(fields, text[i:end])
			i = end
		}
		if i >= len(text) {
			return fields, nil
		}
		i++ // the comma
		if i == len(text) {
			return append(fields, ""), nil
		}
	}
}

// commaOrQuote is the index of the first ',' or '"' in text from i on, or
// len(text). Fields are short: two IndexByte calls a field (a comma, then
// a stray quote) cost more than the bytes, so it looks at 8 bytes a step,
// for both at once (the bytes equal to c are the zero bytes of x^c: the
// lowest zero byte's flag is exact, the borrow only spoiling those above).
func commaOrQuote(text string, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(text); i += 8 {
		x := binary.LittleEndian.Uint64([]byte(text[i : i+8]))
		c, q := x^(','*ones), x^('"'*ones)
		if m := ((c-ones)&^c | (q-ones)&^q) & highs; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(text); i++ {
		if text[i] == ',' || text[i] == '"' {
			return i
		}
	}
	return i
}

// Next returns the rows one at a time, in order.
func (t *csvTable) Next() (*Row, error) { return t.rows.next(t) }

func (t *csvTable) Digest() string { return t.digest }

// Close stops the reader goroutine and closes the input.
func (t *csvTable) Close() error {
	t.once.Do(func() { close(t.stop) })
	return t.closer.Close()
}
