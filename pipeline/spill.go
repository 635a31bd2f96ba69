package pipeline

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"
)

// spill is a set of partitions of records kept on disk, so that what the
// run holds in memory at once is one partition, not the whole audience.
// Workers append records to their own per-partition buffers (spillWriter)
// and write each full buffer as one chunk at the end of a single file;
// reading a partition back reads its chunks. A record never spans chunks.
// The order of chunks in the file depends on timing: whoever reads a
// partition must not depend on the order of its records.
//
// A digested spill (a shard's, which outlives the process) is one file,
// written in the order it is hashed. Any other gives each writer a file
// of its own, PATH.wN, so that workers never wait on each other's writes
// (nor the kernel on one file's lock); a grouped one, a file per writer
// and group of partitions, removed once the group has been read.
type spill struct {
	mu     sync.Mutex
	f      *os.File
	path   string
	off    int64
	chunks [][]span // by partition
	sum    hash.Hash
	err    error
	own    []*os.File // the writers' files, when not digested
	// A grouped spill (see group) keeps each group of partitions in
	// files of their own, removed once the group has been read.
	per    int          // partitions per group; 0: not grouped
	gfiles [][]*os.File // by group: the writers' files
	gleft  []atomic.Int32
}

// spillGroups is how many groups a grouped spill's partitions form, at
// most. The cost of a run's staging on this machine is its high-water mark:
// pages the kernel gets back are cheap to reuse a moment later, while pages
// new to the process (the host hands freed memory back to itself after a
// couple of seconds) cost about 10 µs each. Reading a stage's spills group
// by group and removing each group once read keeps the staging's peak at
// about what one stage's output and the next one's input hold.
const spillGroups = 16

// groupSpillsFrom is the size of the input files (a shard's share of them)
// from which a run groups its spills. Grouping bounds the staging's peak
// at a large audience (10M users: 1.74 GB without, 1.1 GB with), but each
// spill then has a file per writer and group to create and remove, about
// 130 files a run at 120 µs each on this machine, one at a time: at 1M
// users (130 MB of input) runs without groups were faster in 5 of 6
// alternating pairs (1.03 s against 1.09 s on average, less system time
// in all), their staging never above 200 MB. Inputs read from a database,
// of unknown size, are grouped.
var groupSpillsFrom int64 = 512 << 20

// maxGroupFiles bounds a grouped spill's files (a file per writer and
// group): with many workers it has fewer groups, so that a run's open files
// (four grouped spills at once in the join) stay well below the usual limit
// of 1,024.
const maxGroupFiles = 128

// group makes the spill keep its partitions in groups of files, as many as
// spillGroups and maxGroupFiles for writers writers allow (not for a
// digested spill, which is one file written in order, nor with a single
// group). Before any writer is made.
func (s *spill) group(writers int) {
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
func (s *spill) groupOf(p int) int {
	if s.per == 0 {
		return 0
	}
	return p / s.per
}

// consumed says partition p has been read for good (nothing reads it
// again). Once every partition of its group has been, a grouped spill
// closes and removes the group's files, so that the kernel gets their pages
// back while the run still writes. Safe for concurrent use.
func (s *spill) consumed(p int) {
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
// A run's writers hold up to about 1,300 buffers at once (256 buckets of
// the holders and of the snapshot lines, 128 parts of the guard, per
// worker), or 2,048 while events or users are read (1,024 partitions per
// worker): 20 MiB at 8 KiB. At 16 KiB, with 1,024 buckets, peak memory at
// 1M users was 60 MiB more, for no measurable gain at 10M in fewer writes.
const spillChunk = 8 << 10

// newSpill creates an owner-only spill file of parts partitions. With
// digest set it also hashes what is written (see Sum).
func newSpill(path string, parts int, digest bool) (*spill, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	s := &spill{f: f, path: path, chunks: make([][]span, parts)}
	if digest {
		s.sum = sha256.New()
	}
	return s, nil
}

func (s *spill) parts() int { return len(s.chunks) }

// write appends one chunk of partition p to the spill's own file.
func (s *spill) write(p int, b []byte) {
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
func (s *spill) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLocked(err)
}

// failLocked keeps the spill's first error; s.mu is held.
func (s *spill) failLocked(err error) {
	s.err = cmp.Or(s.err, fmt.Errorf("spill %s: %w", s.path, err))
}

// ownFile creates a writer's own file (see spill) for group g, or returns
// nil after an error, which Err reports.
func (s *spill) ownFile(g int) *os.File {
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
func (s *spill) addSpans(spans []partSpan) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ps := range spans {
		s.chunks[ps.p] = append(s.chunks[ps.p], ps.span)
	}
}

// Err is the first write error.
func (s *spill) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Sum is the SHA-256 of the file as written (digest set).
func (s *spill) Sum() string { return hex.EncodeToString(s.sum.Sum(nil)) }

// size is partition p's size in bytes.
func (s *spill) size(p int) int64 {
	n := int64(0)
	for _, c := range s.chunks[p] {
		n += c.n
	}
	return n
}

// appendPart appends partition p's records to buf. Safe for concurrent use
// once writing is over.
func (s *spill) appendPart(buf []byte, p int) ([]byte, error) {
	need := len(buf) + int(s.size(p))
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

// consumed marks partition p of every spill read for good (see
// spill.consumed).
func consumed(srcs []*spill, p int) {
	for _, s := range srcs {
		s.consumed(p)
	}
}

// partSize is partition p's size summed over spills (a run's, or its shards').
func partSize(srcs []*spill, p int) int64 {
	n := int64(0)
	for _, s := range srcs {
		n += s.size(p)
	}
	return n
}

// appendParts appends partition p of every spill to buf.
func appendParts(buf []byte, srcs []*spill, p int) ([]byte, error) {
	var err error
	for _, s := range srcs {
		if buf, err = s.appendPart(buf, p); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// Close closes the files; a second Close is a no-op.
func (s *spill) Close() error {
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

// index is the chunk list, for a spill that outlives its process (a
// shard's, read by the commit): partitions, then per partition its chunk
// count and chunks, all uvarints.
func (s *spill) index() []byte {
	b := binary.AppendUvarint(nil, uint64(len(s.chunks)))
	for _, cs := range s.chunks {
		b = binary.AppendUvarint(b, uint64(len(cs)))
		for _, c := range cs {
			b = binary.AppendUvarint(binary.AppendUvarint(b, uint64(c.off)), uint64(c.n))
		}
	}
	return b
}

// openSpill opens a spill file written by another process, given its
// index; every chunk must lie within the file.
func openSpill(path string, index []byte) (*spill, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	s := &spill{f: f, path: path, off: st.Size()}
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
		return nil, fmt.Errorf("%s: %w index", path, errCorrupt)
	}
	s.chunks = make([][]span, parts)
	for p := range s.chunks {
		n, ok := next()
		if !ok || n > uint64(len(index)) {
			f.Close()
			return nil, fmt.Errorf("%s: %w index", path, errCorrupt)
		}
		for range n {
			off, ok1 := next()
			l, ok2 := next()
			if !ok1 || !ok2 || off > uint64(s.off) || l > uint64(s.off)-off {
				f.Close()
				return nil, fmt.Errorf("%s: %w index", path, errCorrupt)
			}
			s.chunks[p] = append(s.chunks[p], span{f, int64(off), int64(l)})
		}
	}
	if len(index) != 0 {
		f.Close()
		return nil, fmt.Errorf("%s: %w index", path, errCorrupt)
	}
	return s, nil
}

// spillWriter is one worker's buffers for a spill. Use put after appending
// a record to buf(p); flush when done.
//
// Unless the spill is digested, full chunks are gathered in stage and
// written to the writer's own file stageSize at a time: one write call per
// 8 KiB chunk cost more than the copy (a system call is about 4 µs here,
// against 11 µs for a 64 KiB one), and the chunks' spans are recorded
// under the spill's lock once per stage rather than once per chunk. Until
// flush, the spill's chunk list lacks what stage holds: nothing reads a
// spill before its writers have flushed.
type spillWriter struct {
	s    *spill
	bufs [][]byte
	outs []spillOut // one, or one per group of a grouped spill
}

// spillOut is where a writer's chunks of one group go.
type spillOut struct {
	f     *os.File   // its own file, once it has written (see spill)
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

func (s *spill) writer() *spillWriter {
	return &spillWriter{s: s, bufs: make([][]byte, len(s.chunks)), outs: make([]spillOut, max(1, len(s.gfiles)))}
}

// write writes one chunk of partition p, or stages it.
func (w *spillWriter) write(p int, b []byte) {
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
func (w *spillWriter) drain(o *spillOut) {
	if len(o.stage) > 0 {
		w.writeSpans(o, o.stage)
		o.stage = o.stage[:0]
	}
}

// writeSpans writes b, the chunks of o.spans, to o's file and records them.
func (w *spillWriter) writeSpans(o *spillOut, b []byte) {
	if _, err := o.f.Write(b); err != nil {
		w.s.fail(err)
	}
	w.s.addSpans(o.spans)
	o.spans = o.spans[:0]
}

// chunkPool holds partition buffers between writers. Grown from nothing by
// append, each of a stage's thousands of buffers cost two chunks' copying
// and garbage; a new one is allocated whole, and later stages reuse them.
var chunkPool = sync.Pool{New: func() any { return new([spillChunk + spillSlack]byte) }}

// spillSlack is room past spillChunk for the record that fills a buffer.
const spillSlack = 2 << 10

// buf is partition p's buffer, to append one record to.
func (w *spillWriter) buf(p int) []byte {
	if w.bufs[p] == nil {
		w.bufs[p] = chunkPool.Get().(*[spillChunk + spillSlack]byte)[:0]
	}
	return w.bufs[p]
}

// put stores partition p's buffer back, writing it out once it is full.
func (w *spillWriter) put(p int, b []byte) {
	w.bufs[p] = b
	if len(b) >= spillChunk {
		w.write(p, b)
		w.bufs[p] = b[:0]
	}
}

// flush writes what the buffers and the stage hold and gives them back to
// their pools.
func (w *spillWriter) flush() error {
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

// spillReader decodes records: uvarint-length strings and varints. A
// decoding error is sticky and reported by err; the strings share the
// buffer's memory.
type spillReader struct {
	b   []byte
	bad bool
}

func (r *spillReader) more() bool { return len(r.b) > 0 && !r.bad }

func (r *spillReader) err() error {
	if r.bad {
		return fmt.Errorf("spilled records: %w", errCorrupt)
	}
	return nil
}

func (r *spillReader) uvarint() uint64 {
	v, k := binary.Uvarint(r.b)
	if k <= 0 {
		r.bad, r.b = true, nil
		return 0
	}
	r.b = r.b[k:]
	return v
}

// varint decodes a zigzag varint as binary.Varint does: a uvarint whose
// low bit is the sign.
func (r *spillReader) varint() int64 {
	u := r.uvarint()
	v := int64(u >> 1)
	if u&1 != 0 {
		v = ^v
	}
	return v
}

func (r *spillReader) byte() byte {
	if len(r.b) == 0 {
		r.bad = true
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

// str returns the next string, sharing the buffer's memory (see bytesString).
func (r *spillReader) str() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.bad, r.b = true, nil
		return ""
	}
	s := bytesString(r.b[:n])
	r.b = r.b[n:]
	return s
}

// fixed returns the next n bytes.
func (r *spillReader) fixed(n int) []byte {
	if n > len(r.b) {
		r.bad, r.b = true, nil
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

func appendStr(b []byte, s string) []byte {
	return append(binary.AppendUvarint(b, uint64(len(s))), s...)
}

// sha256Stream is the SHA-256 of a file, read without holding it.
func sha256Stream(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// bytesString is b as a string without a copy: b must not change while the
// string is in use.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// spillRead is about how much eachChunk reads at once.
const spillRead = 1 << 20

// eachChunk calls fn with partition p of every spill, a run of whole chunks
// at a time (adjacent ones, up to about spillRead bytes), reusing *buf:
// memory stays flat however large the partition. Safe for concurrent use
// once writing is over.
func eachChunk(srcs []*spill, p int, buf *[]byte, fn func([]byte) error) error {
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

// splitBytes bounds a partition a stage loads whole (a join partition, a
// bucket of holders or of snapshot lines). A larger one is first split into
// spillParts sub-partitions of a spill of its own, so memory stays flat
// however large the audience: join partitions reach 16 MiB at about 200M
// users, buckets of holders (256 of them) at about 110M; at a billion
// every partition and bucket is split once.
var splitBytes int64 = 16 << 20

// splitPart copies partition p of srcs into a new spill at path, each
// record to the sub-partition rec gives; rec returns the length of the
// record b starts with and its sub-partition.
func splitPart(path string, srcs []*spill, p int, rec func(b []byte) (n, sub int, err error)) (*spill, error) {
	sp, err := newSpill(path, spillParts, false)
	if err != nil {
		return nil, err
	}
	w := sp.writer()
	var buf []byte
	err = eachChunk(srcs, p, &buf, func(b []byte) error {
		for len(b) > 0 {
			n, q, err := rec(b)
			if err != nil {
				return err
			}
			w.put(q, append(w.buf(q), b[:n]...))
			b = b[n:]
		}
		return nil
	})
	if err = errors.Join(err, w.flush()); err != nil {
		sp.drop()
		return nil, err
	}
	return sp, nil
}

// drop closes and removes a spill.
func (s *spill) drop() {
	s.Close()
	os.Remove(s.path)
	for _, f := range s.own {
		os.Remove(f.Name())
	}
}
