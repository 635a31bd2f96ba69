package pipeline

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"audiencematch/pipeline/source"
)

// batchPool keeps batches' row and field arrays from one table to the next.
var batchPool = sync.Pool{New: func() any { return new(source.Batch) }}

// eachBatch calls fn on every batch of t from cfg.Workers goroutines; w is
// the calling worker's index, for per-worker state. The batch's strings
// are valid only until fn returns: whatever fn keeps, it copies. It counts rows in the
// progress counter c and stops at the first error or when ctx is done.
func (r *run) eachBatch(ctx context.Context, t source.RowReader, what string, c counter, fn func(w int, b *source.Batch)) error {
	br := source.Batches(t)
	errs := make([]error, r.cfg.Workers)
	var wg sync.WaitGroup
	for w := range r.cfg.Workers {
		wg.Go(func() {
			b := batchPool.Get().(*source.Batch)
			defer batchPool.Put(b)
			for {
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				err := br.NextBatch(b)
				if err == io.EOF {
					return
				}
				if err != nil {
					errs[w] = fmt.Errorf("%s: %w", what, err)
					return
				}
				r.cfg.Progress.add(c, int64(len(b.Rows)))
				fn(w, b)
				br.Release(b)
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
