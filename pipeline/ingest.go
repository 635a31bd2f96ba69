package pipeline

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"

	"audiencematch/consent"
	"audiencematch/hashing"
)

// The consent join. Workers parse batches of consent events in parallel and
// fold the in-scope ones into consentIndex, whose partitions (by a hash of
// the user id) each have their own lock and map; then workers parse batches
// of users in parallel, look each user up (read-only: no locks), decide,
// and normalize the numbers of the users who can be exported or can block
// a number. Nothing depends on which worker took which batch: per-batch
// results are put back in batch order, and counts are sums.

const consentPartitions = 64

// consentIndex is the effective consent event of every user with one.
type consentIndex struct {
	seed  maphash.Seed
	parts [consentPartitions]consentPart
}

type consentPart struct {
	mu     sync.Mutex
	idx    map[string]int32
	states chunked[consent.Effective]
	seen   []atomic.Bool // by the users stage: the user has a row
}

func newConsentIndex() *consentIndex {
	c := &consentIndex{seed: maphash.MakeSeed()}
	for i := range c.parts {
		c.parts[i].idx = map[string]int32{}
	}
	return c
}

func (c *consentIndex) partOf(userID string) int {
	return int(maphash.String(c.seed, userID) % consentPartitions)
}

// fold adds in-scope events of partition p's users. The events' strings
// may share memory with a whole input block, so what is kept is copied.
func (c *consentIndex) fold(p int, events []consent.Event) {
	part := &c.parts[p]
	part.mu.Lock()
	defer part.mu.Unlock()
	for i := range events {
		e := &events[i]
		k, ok := part.idx[e.UserID]
		if !ok {
			k = int32(part.states.n)
			part.idx[strings.Clone(e.UserID)] = k
			part.states.add(consent.Effective{})
		}
		if st := part.states.at(int(k)); st.Add(e) {
			st.EventID = strings.Clone(e.EventID)
		}
	}
}

// seal ends folding; lookups may then run concurrently.
func (c *consentIndex) seal() {
	for i := range c.parts {
		c.parts[i].seen = make([]atomic.Bool, c.parts[i].states.n)
	}
}

// lookup returns the user's effective event, nil without one, and marks
// the user as seen.
func (c *consentIndex) lookup(userID string) *consent.Effective {
	part := &c.parts[c.partOf(userID)]
	k, ok := part.idx[userID]
	if !ok {
		return nil
	}
	part.seen[k].Store(true)
	return part.states.at(int(k))
}

// eventWorker is one worker's state while consent events are read.
type eventWorker struct {
	rows    int64
	classes [len(consent.EventClassNames)]int64
	pending [consentPartitions][]consent.Event
}

func (r *run) readConsent(ctx context.Context) error {
	t, err := r.cfg.Source.Open(ctx, TableConsent, EventColumns)
	if err != nil {
		return fmt.Errorf("consent events: %w", err)
	}
	defer t.Close()
	idx := newConsentIndex()
	rules, sh := r.cfg.Rules, r.cfg.Shard
	workers := make([]eventWorker, r.cfg.Workers)
	rejects := r.orderedRejects()
	err = r.eachBatch(ctx, t, "consent events", cEvents, func(w int, b *rowBatch) {
		ew := &workers[w]
		var rej []rejectRow
		for i := range b.rows {
			row := &b.rows[i]
			if row.Reject != "" {
				if sh.owns("", row.Line) {
					ew.rows++
					ew.classes[consent.ClassMalformed]++
					rej = append(rej, rejectRow{TableConsent, row.Line, row.Reject, row.Raw})
				}
				continue
			}
			f := row.Fields
			e, err := consent.ParseEvent(f[0], f[1], f[2], f[3], f[4], f[5], f[6])
			if err != nil {
				if sh.owns("", row.Line) {
					var re *consent.RejectError
					errors.As(err, &re)
					ew.rows++
					ew.classes[consent.ClassMalformed]++
					rej = append(rej, rejectRow{TableConsent, row.Line, re.Reason, fieldsText(f)})
				}
				continue
			}
			if !sh.owns(e.UserID, row.Line) {
				continue
			}
			ew.rows++
			if class := rules.Classify(&e); class != consent.ClassUsed {
				ew.classes[class]++
				continue
			}
			p := idx.partOf(e.UserID)
			ew.pending[p] = append(ew.pending[p], e)
		}
		rejects.done(b.seq, rej)
		for p, events := range ew.pending {
			if len(events) > 0 {
				idx.fold(p, events)
				clear(events) // let go of the block's memory
				ew.pending[p] = events[:0]
			}
		}
	})
	if err != nil {
		return err
	}
	c := &r.m.ConsentEvents
	for i := range workers {
		c.Rows += workers[i].rows
		for class, n := range workers[i].classes {
			c.ByClass[consent.EventClassNames[class]] += n
		}
	}
	idx.seal()
	r.consent = idx
	r.m.addInput(TableConsent, r.cfg.Source.Name(TableConsent), t.Digest(), c.Rows)
	return nil
}

// userWorker is one worker's state while users are read.
type userWorker struct {
	rows     int64
	excluded map[string]int64
	guard    *leakGuard
	line     []byte // a snapshot line being hashed
	// What the worker's batches contribute, batch after batch.
	holders chunked[holder]
	snap    chunked[[sha256.Size]byte]
}

// userBatch is where one batch's holders and snapshot lines are: ranges of
// its worker's chunked stores. They are gathered in batch order.
type userBatch struct {
	worker         int
	holders, lines [2]int
}

func (r *run) readUsers(ctx context.Context) error {
	t, err := r.cfg.Source.Open(ctx, TableUsers, UserColumns)
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	defer t.Close()
	idx, sh, rules := r.consent, r.cfg.Shard, r.cfg.Rules
	workers := make([]userWorker, r.cfg.Workers)
	for i := range workers {
		workers[i] = userWorker{excluded: map[string]int64{}, guard: newLeakGuard(r.guard.salt)}
	}
	var mu sync.Mutex
	var batches []userBatch
	rejects := r.orderedRejects()
	err = r.eachBatch(ctx, t, "users", cUsers, func(w int, b *rowBatch) {
		uw := &workers[w]
		var rej []rejectRow
		out := userBatch{worker: w, holders: [2]int{uw.holders.n, uw.holders.n}, lines: [2]int{uw.snap.n, uw.snap.n}}
		for i := range b.rows {
			row := &b.rows[i]
			if row.Reject != "" {
				if sh.owns("", row.Line) {
					uw.rows++
					uw.excluded[ReasonMalformedRow]++
					rej = append(rej, rejectRow{TableUsers, row.Line, row.Reject, row.Raw})
				}
				continue
			}
			userID, phone, country := row.Fields[0], row.Fields[1], row.Fields[2]
			if !sh.owns(userID, row.Line) {
				continue
			}
			uw.rows++
			if userID == "" {
				uw.excluded[ReasonMalformedRow]++
				rej = append(rej, rejectRow{TableUsers, row.Line, consent.RejectEmptyUserID, fieldsText(row.Fields)})
				continue
			}
			status, eventID := consent.NoConsent, ""
			if st := idx.lookup(userID); st != nil {
				status, eventID = rules.Decide(st), st.EventID
			}
			uw.snap.add(uw.snapshotLine(userID, status, eventID))
			uw.guard.Add(userID)
			uw.guard.Add(phone)
			if status != consent.Valid && status != consent.Withdrawn {
				uw.excluded[status.String()]++
				continue
			}
			e164, nerr := hashing.Normalize(phone, country)
			if nerr == nil {
				uw.guard.Add(e164)
			}
			uw.holders.add(holder{
				userID: strings.Clone(userID), eventID: eventID, e164: e164,
				status: status, line: row.Line, invalid: nerr != nil,
			})
		}
		out.holders[1], out.lines[1] = uw.holders.n, uw.snap.n
		held := int64(out.holders[1] - out.holders[0])
		r.cfg.Progress.add(cHolders, held)
		r.cfg.Progress.add(cNormalized, held)
		rejects.done(b.seq, rej)
		mu.Lock()
		for len(batches) <= b.seq {
			batches = append(batches, userBatch{})
		}
		batches[b.seq] = out
		mu.Unlock()
	})
	if err != nil {
		return err
	}
	u := &r.m.Users
	n, lines := 0, 0
	for i := range workers {
		u.Rows += workers[i].rows
		addCounts(u.Excluded, workers[i].excluded)
		r.guard.merge(workers[i].guard)
	}
	for i := range workers {
		n, lines = n+workers[i].holders.n, lines+workers[i].snap.n
	}
	r.holders = make([]holder, 0, n)
	snap := make([][sha256.Size]byte, 0, lines)
	for _, b := range batches {
		r.holders = workers[b.worker].holders.appendRange(r.holders, b.holders[0], b.holders[1])
		snap = workers[b.worker].snap.appendRange(snap, b.lines[0], b.lines[1])
	}
	workers = nil
	r.m.addInput(TableUsers, r.cfg.Source.Name(TableUsers), t.Digest(), u.Rows)
	if sh.Count > 0 {
		r.snapLines = snap // the commit digests every shard's lines together
	} else {
		r.snapshot = consentSnapshot(snap)
	}
	// Events of users absent from the users table count as unknown_user.
	c := &r.m.ConsentEvents
	for p := range idx.parts {
		part := &idx.parts[p]
		for k := range part.states.n {
			if part.seen[k].Load() {
				c.ByClass[consent.ClassUsed.String()] += int64(part.states.at(k).InScope)
			} else {
				c.ByClass[consent.ClassUnknownUser.String()] += int64(part.states.at(k).InScope)
			}
		}
	}
	r.consent = nil // the decisions now live in the holders
	return nil
}

// snapshotLine hashes one user row's consent decision, the line
// "user_id \t status \t effective_event_id \n", reusing the worker's buffer.
func (uw *userWorker) snapshotLine(userID string, status consent.Status, eventID string) [sha256.Size]byte {
	b := append(uw.line[:0], userID...)
	b = append(append(append(b, '\t'), status.String()...), '\t')
	b = append(append(b, eventID...), '\n')
	uw.line = b
	return sha256.Sum256(b)
}
