package spill

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"
)

// ErrCorrupt is wrapped by the errors of records and indexes that cannot be
// decoded.
var ErrCorrupt = errors.New("corrupt")

// Options are a spill's settings. The zero value is a spill that is neither
// digested nor grouped.
type Options struct {
	// Digest makes the spill one file, written in the order it is hashed
	// (see Sum), for a spill that outlives its process. A digested spill is
	// never grouped.
	Digest bool
	// GroupWriters, when more than 0, groups the spill's partitions for
	// that many writers (see Groups in the package documentation): the
	// more writers, the fewer groups.
	GroupWriters int
}

// Spill is a set of partitions of records kept on disk (see the package
// documentation). Workers append records through Writers of their own;
// reading a partition back reads its chunks.
type Spill struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	off    int64
	chunks [][]span // by partition
	sum    hash.Hash
	err    error
	own    []*os.File // the writers' files, when not digested
	// A grouped spill keeps each group of partitions in files of their
	// own, removed once the group has been read.
	per    int          // partitions per group; 0: not grouped
	gfiles [][]*os.File // by group: the writers' files
	gleft  []atomic.Int32
}

// spillGroups is how many groups a grouped spill's partitions form, at
// most. The cost of a run's staging is its high-water mark: pages the
// kernel gets back are cheap to reuse a moment later, while pages new to
// the process cost a fault each (docs/PERFORMANCE.md). Reading a stage's
// spills group by group and removing each group once read keeps the
// staging's peak at about what one stage's output and the next one's input
// hold.
const spillGroups = 16

// maxGroupFiles bounds a grouped spill's files (a file per writer and
// group): with many writers it has fewer groups, so that a run's open files
// (four grouped spills at once in the join) stay well below the usual limit
// of 1,024.
const maxGroupFiles = 128

// group makes the spill keep its partitions in groups of files, as many as
// spillGroups and maxGroupFiles for writers writers allow (not for a
// digested spill, which is one file written in order, nor with a single
// group). Before any writer is made.
func (s *Spill) group(writers int) {
	n := spillGroups
	for n > 1 && (writers*n > maxGroupFiles || len(s.chunks)%n != 0) {
		n /= 2
	}
	if s.sum != nil || n < 2 {
		return
	}
	s.per = len(s.chunks) / n
	s.gfiles = make([][]*os.File, n)
	s.gleft = make([]atomic.Int32, n)
	for g := range s.gleft {
		s.gleft[g].Store(int32(s.per))
	}
}

// groupOf is partition p's group (0 when the spill is not grouped).
func (s *Spill) groupOf(p int) int {
	if s.per == 0 {
		return 0
	}
	return p / s.per
}

// Consumed says partition p has been read for good (nothing reads it
// again). Once every partition of its group has been, a grouped spill
// closes and removes the group's files, so that the kernel gets their pages
// back while the process still writes; for any other spill it does nothing.
// Safe for concurrent use.
func (s *Spill) Consumed(p int) {
	if s.per == 0 {
		return
	}
	g := p / s.per
	if s.gleft[g].Add(-1) != 0 {
		return
	}
	s.mu.Lock()
	files := s.gfiles[g]
	s.gfiles[g] = nil
	s.own = slices.DeleteFunc(s.own, func(f *os.File) bool { return slices.Contains(files, f) })
	s.mu.Unlock()
	for _, f := range files {
		f.Close()
		os.Remove(f.Name())
	}
}

// span is a chunk: n bytes at off in f.
type span struct {
	f      *os.File
	off, n int64
}

// spillChunk is the size at which a writer's partition buffer is written.
// Every writer holds a buffer per partition it writes to, and a run's
// workers write several spills of hundreds of partitions each at once:
// thousands of buffers, so that a larger chunk costs memory for fewer
// writes that save no measurable time (docs/PERFORMANCE.md).
const spillChunk = 8 << 10

// New creates an owner-only spill file at path of parts partitions,
// digested or grouped as o says.
func New(path string, parts int, o Options) (*Spill, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	s := &Spill{f: f, path: path, chunks: make([][]span, parts)}
	if o.Digest {
		s.sum = sha256.New()
	}
	if o.GroupWriters > 0 {
		s.group(o.GroupWriters)
	}
	return s, nil
}

// Parts is the number of partitions.
func (s *Spill) Parts() int { return len(s.chunks) }

// Path is the spill's path, its one file when digested.
func (s *Spill) Path() string { return s.path }

// write appends one chunk of partition p to the spill's own file.
func (s *Spill) write(p int, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	if _, err := s.f.Write(b); err != nil {
		s.failLocked(err)
		return
	}
	if s.sum != nil {
		s.sum.Write(b)
	}
	s.chunks[p] = append(s.chunks[p], span{s.f, s.off, int64(len(b))})
	s.off += int64(len(b))
}

// fail keeps the spill's first error.
func (s *Spill) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

// failLocked keeps the spill's first error; s.mu is held.
func (s *Spill) failLocked(err error) {
	s.err = cmp.Or(s.err, fmt.Errorf("spill %s: %w", s.path, err))
}

// ownFile creates a writer's own file (see Spill) for group g, or returns
// nil after an error, which Err reports.
func (s *Spill) ownFile(g int) *os.File {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil
	}
	f, err := os.OpenFile(fmt.Sprintf("%s.w%d", s.path, len(s.own)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		s.failLocked(err)
		return nil
	}
	s.own = append(s.own, f)
	if s.per > 0 {
		s.gfiles[g] = append(s.gfiles[g], f)
	}
	return f
}

// addSpans records chunks a writer has written to its own file.
func (s *Spill) addSpans(spans []partSpan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ps := range spans {
		s.chunks[ps.p] = append(s.chunks[ps.p], ps.span)
	}
}

// Err is the first write error.
func (s *Spill) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Sum is the SHA-256 of the file as written, in hex (a digested spill).
func (s *Spill) Sum() string { return hex.EncodeToString(s.sum.Sum(nil)) }

// Size is partition p's size in bytes.
func (s *Spill) Size(p int) int64 {
	n := int64(0)
	for _, c := range s.chunks[p] {
		n += c.n
	}
	return n
}

// AppendPart appends partition p's records to buf. Safe for concurrent use
// once writing is over.
func (s *Spill) AppendPart(buf []byte, p int) ([]byte, error) {
	need := len(buf) + int(s.Size(p))
	if cap(buf) < need {
		buf = append(make([]byte, 0, need), buf...)
	}
	for _, c := range s.chunks[p] {
		at := len(buf)
		buf = buf[:at+int(c.n)]
		if _, err := c.f.ReadAt(buf[at:], c.off); err != nil {
			return nil, fmt.Errorf("spill %s: %w", s.path, err)
		}
	}
	return buf, nil
}

// Consumed marks partition p of every spill read for good (see
// Spill.Consumed).
func Consumed(srcs []*Spill, p int) {
	for _, s := range srcs {
		s.Consumed(p)
	}
}

// PartSize is partition p's size summed over spills (a run's, or its
// shards').
func PartSize(srcs []*Spill, p int) int64 {
	n := int64(0)
	for _, s := range srcs {
		n += s.Size(p)
	}
	return n
}

// AppendParts appends partition p of every spill to buf.
func AppendParts(buf []byte, srcs []*Spill, p int) ([]byte, error) {
	var err error
	for _, s := range srcs {
		if buf, err = s.AppendPart(buf, p); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// Sync commits the spill's files to stable storage.
func (s *Spill) Sync() error {
	err := s.f.Sync()
	for _, f := range s.own {
		err = errors.Join(err, f.Sync())
	}
	return err
}

// Close closes the files; a second Close is a no-op.
func (s *Spill) Close() error {
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	for _, f := range s.own {
		err = errors.Join(err, f.Close())
	}
	s.f = nil
	return err
}

// Index is the chunk list (see the package documentation), for a spill
// that outlives its process (a shard's, read by the commit): partitions,
// then per partition its chunk count and chunks, all uvarints.
func (s *Spill) Index() []byte {
	b := binary.AppendUvarint(nil, uint64(len(s.chunks)))
	for _, cs := range s.chunks {
		b = binary.AppendUvarint(b, uint64(len(cs)))
		for _, c := range cs {
			b = binary.AppendUvarint(binary.AppendUvarint(b, uint64(c.off)), uint64(c.n))
		}
	}
	return b
}

// Open opens a spill file written by another process, given its index;
// every chunk must lie within the file. The spill is read-only.
func Open(path string, index []byte) (*Spill, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &Spill{f: f, path: path, off: st.Size()}
	next := func() (uint64, bool) {
		v, k := binary.Uvarint(index)
		if k <= 0 {
			return 0, false
		}
		index = index[k:]
		return v, true
	}
	parts, ok := next()
	if !ok || parts == 0 || parts > 1<<20 {
		f.Close()
		return nil, fmt.Errorf("%s: %w index", path, ErrCorrupt)
	}
	s.chunks = make([][]span, parts)
	for p := range s.chunks {
		n, ok := next()
		if !ok || n > uint64(len(index)) {
			f.Close()
			return nil, fmt.Errorf("%s: %w index", path, ErrCorrupt)
		}
		for range n {
			off, ok1 := next()
			l, ok2 := next()
			if !ok1 || !ok2 || off > uint64(s.off) || l > uint64(s.off)-off {
				f.Close()
				return nil, fmt.Errorf("%s: %w index", path, ErrCorrupt)
			}
			s.chunks[p] = append(s.chunks[p], span{f, int64(off), int64(l)})
		}
	}
	if len(index) != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: %w index", path, ErrCorrupt)
	}
	return s, nil
}

// Writer is one worker's buffers for a spill. Append a record to Buf(p),
// then hand the buffer back with Put; Flush when done.
//
// Unless the spill is digested, full chunks are gathered and written to the
// writer's own file 256 KiB at a time: a write call per 8 KiB chunk costs
// more than the copy, and the chunks' spans are recorded under the spill's
// lock once per gathering rather than once per chunk. Until Flush, the
// spill's chunk list lacks what the writer has gathered: nothing reads a
// spill before its writers have flushed.
type Writer struct {
	s    *Spill
	bufs [][]byte
	outs []spillOut // one, or one per group of a grouped spill
}

// spillOut is where a writer's chunks of one group go.
type spillOut struct {
	f     *os.File   // its own file, once it has written (see Spill)
	off   int64      // f's size, with stage written
	stage []byte     // full chunks not yet written to f
	spans []partSpan // where stage's chunks go
}

// partSpan is a chunk of partition p.
type partSpan struct {
	p int
	span
}

// stageSize is how much of its full chunks a writer gathers per write.
const stageSize = 256 << 10

var stagePool = sync.Pool{New: func() any { return new([stageSize]byte) }}

// Writer returns a writer for one goroutine; Flush it when done.
func (s *Spill) Writer() *Writer {
	return &Writer{s: s, bufs: make([][]byte, len(s.chunks)), outs: make([]spillOut, max(1, len(s.gfiles)))}
}

// write writes one chunk of partition p, or stages it.
func (w *Writer) write(p int, b []byte) {
	if w.s.sum != nil {
		w.s.write(p, b)
		return
	}
	g := w.s.groupOf(p)
	o := &w.outs[g]
	if o.f == nil {
		if o.f = w.s.ownFile(g); o.f == nil {
			return
		}
		o.stage = stagePool.Get().(*[stageSize]byte)[:0]
	}
	if len(o.stage)+len(b) > cap(o.stage) {
		w.drain(o)
	}
	// o.off counts the stage: it is where b lands in the file.
	o.spans = append(o.spans, partSpan{p, span{o.f, o.off, int64(len(b))}})
	o.off += int64(len(b))
	if len(b) > cap(o.stage) { // a record longer than the stage goes on its own
		w.writeSpans(o, b)
		return
	}
	o.stage = append(o.stage, b...)
}

// drain writes o's staged chunks and records their spans.
func (w *Writer) drain(o *spillOut) {
	if len(o.stage) > 0 {
		w.writeSpans(o, o.stage)
		o.stage = o.stage[:0]
	}
}

// writeSpans writes b, the chunks of o.spans, to o's file and records them.
func (w *Writer) writeSpans(o *spillOut, b []byte) {
	if _, err := o.f.Write(b); err != nil {
		w.s.fail(err)
	}
	w.s.addSpans(o.spans)
	o.spans = o.spans[:0]
}

// chunkPool holds partition buffers between writers. Grown from nothing by
// append, each of a stage's thousands of buffers would cost two chunks'
// copying and garbage; a new one is allocated whole, and later stages reuse
// them.
var chunkPool = sync.Pool{New: func() any { return new([spillChunk + spillSlack]byte) }}

// spillSlack is room past spillChunk for the record that fills a buffer.
const spillSlack = 2 << 10

// Buf is partition p's buffer, to append one record to and hand back with
// Put.
func (w *Writer) Buf(p int) []byte {
	if w.bufs[p] == nil {
		w.bufs[p] = chunkPool.Get().(*[spillChunk + spillSlack]byte)[:0]
	}
	return w.bufs[p]
}

// Put stores partition p's buffer back, writing it out once it is full.
func (w *Writer) Put(p int, b []byte) {
	w.bufs[p] = b
	if len(b) >= spillChunk {
		w.write(p, b)
		w.bufs[p] = b[:0]
	}
}

// Flush writes what the buffers and the stage hold, gives them back to
// their pools, and returns the spill's first write error.
func (w *Writer) Flush() error {
	for p, b := range w.bufs {
		if len(b) > 0 {
			w.write(p, b)
		}
		if cap(b) == spillChunk+spillSlack { // not one a long record grew
			chunkPool.Put((*[spillChunk + spillSlack]byte)(b[:cap(b)]))
		}
		w.bufs[p] = nil
	}
	for i := range w.outs {
		if o := &w.outs[i]; o.stage != nil {
			w.drain(o)
			stagePool.Put((*[stageSize]byte)(o.stage[:stageSize]))
			o.stage = nil
		}
	}
	return w.s.Err()
}

// Reader decodes records framed as the package documentation says:
// uvarint-length strings, uvarints, varints, bytes and fixed-size fields.
// A decoding error is sticky and reported by Err; the strings share the
// buffer's memory.
type Reader struct {
	b   []byte
	bad bool
}

// NewReader reads the records in b.
func NewReader(b []byte) Reader { return Reader{b: b} }

// More reports whether bytes are left to decode and nothing has failed.
func (r *Reader) More() bool { return len(r.b) > 0 && !r.bad }

// Len is how many bytes are left to decode: a record read from the start
// of b is len(b) - Len() bytes long.
func (r *Reader) Len() int { return len(r.b) }

// Err is the first decoding error, which wraps ErrCorrupt.
func (r *Reader) Err() error {
	if r.bad {
		return fmt.Errorf("spilled records: %w", ErrCorrupt)
	}
	return nil
}

// Uvarint decodes an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	v, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.bad, r.b = true, nil
		return 0
	}
	r.b = r.b[k:]
	return v
}

// Varint decodes a zigzag varint as binary.Varint does: a uvarint whose
// low bit is the sign.
func (r *Reader) Varint() int64 {
	u := r.Uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

// Byte decodes one byte.
func (r *Reader) Byte() byte {
	if len(r.b) == 0 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// Str returns the next string, sharing the buffer's memory.
func (r *Reader) Str() string {
	n := r.Uvarint()
	if n > uint64(len(r.b)) {
		r.bad, r.b = true, nil
		return ""
	}
	s := bytesString(r.b[:n])
	r.b = r.b[n:]
	return s
}

// Fixed returns the next n bytes, sharing the buffer's memory.
func (r *Reader) Fixed(n int) []byte {
	if n > len(r.b) {
		r.bad, r.b = true, nil
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

// AppendStr appends s framed as a string: its length as a uvarint, then
// its bytes.
func AppendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// bytesString is b as a string without a copy: b must not change while the
// string is in use.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// spillRead is about how much EachChunk reads at once.
const spillRead = 1 << 20

// EachChunk calls fn with partition p of every spill, a run of whole chunks
// at a time (adjacent ones, up to about 1 MiB), reusing *buf: memory stays
// flat however large the partition. Safe for concurrent use once writing is
// over.
func EachChunk(srcs []*Spill, p int, buf *[]byte, fn func([]byte) error) error {
	for _, s := range srcs {
		cs := s.chunks[p]
		for i := 0; i < len(cs); {
			j, n := i+1, cs[i].n
			for j < len(cs) && cs[j].f == cs[i].f && cs[j].off == cs[j-1].off+cs[j-1].n && n+cs[j].n <= spillRead {
				n, j = n+cs[j].n, j+1
			}
			if int64(cap(*buf)) < n {
				*buf = make([]byte, n)
			}
			b := (*buf)[:n]
			if _, err := cs[i].f.ReadAt(b, cs[i].off); err != nil {
				return fmt.Errorf("spill %s: %w", s.path, err)
			}
			if err := fn(b); err != nil {
				return err
			}
			i = j
		}
	}
	return nil
}

// Split copies partition p of srcs into a new spill at path, of parts
// partitions, each record to the sub-partition rec gives: a partition too
// large to load whole is read a sub-partition at a time. rec returns the
// length of the record b starts with and its sub-partition. The new spill
// is neither digested nor grouped; the caller drops it.
func Split(path string, srcs []*Spill, p, parts int, rec func(b []byte) (n, sub int, err error)) (*Spill, error) {
	sp, err := New(path, parts, Options{})
	if err != nil {
		return nil, err
	}
	w := sp.Writer()
	var buf []byte
	err = EachChunk(srcs, p, &buf, func(b []byte) error {
		for len(b) > 0 {
			n, q, err := rec(b)
			if err != nil {
				return err
			}
			w.Put(q, append(w.Buf(q), b[:n]...))
			b = b[n:]
		}
		return nil
	})
	if err = errors.Join(err, w.Flush()); err != nil {
		sp.Drop()
		return nil, err
	}
	return sp, nil
}

// Drop closes and removes the spill's files.
func (s *Spill) Drop() {
	s.Close()
	os.Remove(s.path)
	for _, f := range s.own {
		os.Remove(f.Name())
	}
}
