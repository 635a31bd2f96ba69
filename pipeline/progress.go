package pipeline

import "sync/atomic"

// Progress is what a running export has done so far, for progress bars and
// periodic log lines. Its methods are safe for concurrent use; a nil
// *Progress ignores updates.
type Progress struct {
	stage                     atomic.Pointer[string]
	events, users, normalized atomic.Int64
	holders                   atomic.Int64
}

// Stage is the stage running now ("" before the first).
func (p *Progress) Stage() string {
	if s := p.stage.Load(); s != nil {
		return *s
	}
	return ""
}

// Counts returns consent events read, users read, and numbers normalized
// out of those to normalize.
func (p *Progress) Counts() (events, users, normalized, toNormalize int64) {
	return p.events.Load(), p.users.Load(), p.normalized.Load(), p.holders.Load()
}

func (p *Progress) setStage(s string) {
	if p != nil {
		p.stage.Store(&s)
	}
}

// counter picks one of the counters; a nil Progress has none.
type counter func(*Progress) *atomic.Int64

var (
	cEvents     counter = func(p *Progress) *atomic.Int64 { return &p.events }
	cUsers      counter = func(p *Progress) *atomic.Int64 { return &p.users }
	cNormalized counter = func(p *Progress) *atomic.Int64 { return &p.normalized }
	cHolders    counter = func(p *Progress) *atomic.Int64 { return &p.holders }
)

func (p *Progress) add(c counter, n int64) {
	if p != nil {
		c(p).Add(n)
	}
}
