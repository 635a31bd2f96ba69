package pipeline

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
)

// rowBatch is a run of consecutive rows of one table. Batches are numbered
// in file order from 0, so work done on them in parallel can be put back in
// order (see orderedRejects).
type rowBatch struct {
	seq    int
	rows   []Row
	fields []string // the rows' Fields slice this
	block  []byte   // what the rows' strings point into, when a reader recycles it
	arena  []byte   // what they point into, when the batch owns it (parquetStrings)
	spans  []int32  // the fields' offsets in arena, while it is filled
}

func (b *rowBatch) reset(seq int) {
	b.seq, b.rows, b.fields = seq, b.rows[:0], b.fields[:0]
}

// batchCursor hands out a batchReader's rows one at a time, in order: the
// RowReader side of a reader that parses in batches.
type batchCursor struct {
	cur rowBatch
	pos int
}

// next returns br's next row; it is valid until the following call.
func (c *batchCursor) next(br batchReader) (*Row, error) {
	for c.pos == len(c.cur.rows) {
		if err := br.nextBatch(&c.cur); err != nil {
			return nil, err
		}
		c.pos = 0
	}
	c.pos++
	return &c.cur.rows[c.pos-1], nil
}

// batchReader hands out batches to concurrent workers.
type batchReader interface {
	// nextBatch fills b with the next batch, or returns io.EOF after the
	// last. Safe for concurrent use.
	nextBatch(b *rowBatch) error
}

// blockRecycler is a batchReader whose batches' strings point into a buffer
// it can reuse once the batch is done with: nothing may keep them.
type blockRecycler interface {
	release(b *rowBatch)
}

// batchesOf returns t's batches: parsed in parallel when t can (CSV), else
// cut from its rows one batch at a time.
func batchesOf(t RowReader) batchReader {
	if br, ok := t.(batchReader); ok {
		return br
	}
	return &rowBatcher{t: t}
}

// rowBatcher cuts a RowReader's rows into batches, under a lock.
type rowBatcher struct {
	mu  sync.Mutex
	t   RowReader
	seq int
	err error
}

const rowBatchSize = 4096

func (r *rowBatcher) nextBatch(b *rowBatch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	b.reset(r.seq)
	for len(b.rows) < rowBatchSize {
		row, err := r.t.Next()
		if err != nil {
			r.err = err
			break
		}
		start := len(b.fields)
		b.fields = append(b.fields, row.Fields...)
		b.rows = append(b.rows, Row{Line: row.Line, Reject: row.Reject, Raw: row.Raw,
			Fields: b.fields[start:len(b.fields):len(b.fields)]})
	}
	if len(b.rows) == 0 {
		return r.err
	}
	r.seq++
	return nil
}

// batchPool keeps batches' row and field arrays from one table to the next.
var batchPool = sync.Pool{New: func() any { return new(rowBatch) }}

// eachBatch calls fn on every batch of t from cfg.Workers goroutines; w is
// the calling worker's index, for per-worker state. The batch's strings
// are valid only until fn returns: whatever fn keeps, it copies. It counts rows in the
// progress counter c and stops at the first error or when ctx is done.
func (r *run) eachBatch(ctx context.Context, t RowReader, what string, c counter, fn func(w int, b *rowBatch)) error {
	br := batchesOf(t)
	errs := make([]error, r.cfg.Workers)
	var wg sync.WaitGroup
	for w := range r.cfg.Workers {
		wg.Go(func() {
			b := batchPool.Get().(*rowBatch)
			defer batchPool.Put(b)
			for {
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				err := br.nextBatch(b)
				if err == io.EOF {
					return
				}
				if err != nil {
					errs[w] = fmt.Errorf("%s: %w", what, err)
					return
				}
				r.cfg.Progress.add(c, int64(len(b.rows)))
				fn(w, b)
				if rc, ok := br.(blockRecycler); ok {
					rc.release(b)
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// orderedRejects writes the rejects of batches done in any order in batch
// order, so the reject file is in line order whatever the parallelism.
// Every batch must be reported, with or without rejects.
type orderedRejects struct {
	mu      sync.Mutex
	r       *run
	next    int
	pending map[int][]rejectRow
}

func (r *run) orderedRejects() *orderedRejects {
	return &orderedRejects{r: r, pending: map[int][]rejectRow{}}
}

// done reports batch seq's rejects.
func (o *orderedRejects) done(seq int, rows []rejectRow) {
	for i := range rows {
		rows[i].raw = strings.Clone(rows[i].raw) // the batch's memory is reused
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.pending[seq] = rows
	for {
		rows, ok := o.pending[o.next]
		if !ok {
			return
		}
		delete(o.pending, o.next)
		o.next++
		for _, x := range rows {
			o.r.reject(x.table, x.line, x.reason, x.raw)
		}
	}
}
