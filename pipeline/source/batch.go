package source

import "sync"

// Batch is a run of consecutive rows of one table, as a BatchReader hands
// them out. The zero Batch is ready for NextBatch; a Batch keeps its arrays
// from one batch to the next, so a goroutine reuses one.
type Batch struct {
	// Seq numbers a table's batches in input order from 0, without gaps:
	// every row of batch n comes before every row of batch n+1, so work
	// done on batches in any order, by any number of goroutines, can be
	// put back in input order. A batch may hold no rows (a block of a CSV
	// file that has only blank lines) and still has its number.
	Seq int
	// Rows are the batch's rows, in input order. They, their Fields and
	// the strings in them point into memory the Batch shares with its
	// reader: see BatchReader for how long they are valid.
	Rows []Row

	fields []string // the rows' Fields slice this
	block  []byte   // what the rows' strings point into, when a reader recycles it (Release)
	arena  []byte   // what they point into, when the batch owns it (parquetStrings)
	spans  []int32  // the fields' offsets in arena, while it is filled
	part   int      // 1 + the part of a table in parts that filled it (multiTable); 0 otherwise
}

func (b *Batch) reset(seq int) {
	b.Seq, b.Rows, b.fields = seq, b.Rows[:0], b.fields[:0]
}

// BatchReader hands out the rows of one table in batches, to any number of
// goroutines at once, each with a Batch of its own: the way a run reads
// its inputs, parsing on every core (see Batches).
//
// NextBatch fills b with the next batch, replacing what b held. It returns
// nil with a batch, or an error without one, never both: io.EOF after the
// last batch, and the same error to every later call. It is safe for
// concurrent use. The table's Digest is complete once NextBatch has
// returned io.EOF and no call is still running.
//
// The rows of b, their Fields and the strings in them are valid until b
// goes to NextBatch again or to Release, and not after: the strings are
// not copies, and their memory is reused for later batches, so they may
// change. Whatever the caller keeps longer, it copies (strings.Clone).
//
// Release hands the memory of b's rows back to the reader, to fill with a
// later batch, once the caller is done with them; b may then go to
// NextBatch again. Calling it is optional (memory not released is
// collected as garbage), but a table read with it goes through a few
// buffers instead of fresh memory a batch.
//
// A table is read through its batches or through Next, not both.
type BatchReader interface {
	NextBatch(b *Batch) error
	Release(b *Batch)
}

// Batches returns the batches of r: r itself when r is a BatchReader (the
// CSV, COPY and Parquet string readers are: they parse batches in
// parallel), otherwise r's rows cut into batches, one batch at a time
// under a lock.
func Batches(r RowReader) BatchReader {
	if br, ok := r.(BatchReader); ok {
		return br
	}
	return &rowBatcher{t: r}
}

// batchCursor hands out a BatchReader's rows one at a time, in order: the
// RowReader side of a reader that parses in batches.
type batchCursor struct {
	cur Batch
	pos int
}

// next returns br's next row; it is valid until the following call.
func (c *batchCursor) next(br BatchReader) (*Row, error) {
	for c.pos == len(c.cur.Rows) {
		if err := br.NextBatch(&c.cur); err != nil {
			return nil, err
		}
		c.pos = 0
	}
	c.pos++
	return &c.cur.Rows[c.pos-1], nil
}

// rowBatcher cuts a RowReader's rows into batches, under a lock. It keeps
// the strings of many rows in a batch, which RowReader allows.
type rowBatcher struct {
	mu  sync.Mutex
	t   RowReader
	seq int
	err error
}

const rowBatchSize = 4096

func (r *rowBatcher) NextBatch(b *Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	b.reset(r.seq)
	for len(b.Rows) < rowBatchSize {
		row, err := r.t.Next()
		if err != nil {
			r.err = err
			break
		}
		start := len(b.fields)
		b.fields = append(b.fields, row.Fields...)
		b.Rows = append(b.Rows, Row{Line: row.Line, Reject: row.Reject, Raw: row.Raw,
			Fields: b.fields[start:len(b.fields):len(b.fields)]})
	}
	if len(b.Rows) == 0 {
		return r.err
	}
	r.seq++
	return nil
}

// Release does nothing: the rows' strings are the RowReader's.
func (*rowBatcher) Release(*Batch) {}
