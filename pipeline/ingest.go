package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math/bits"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"audiencematch/consent"
	"audiencematch/hashing"
	"audiencematch/pipeline/leakguard"
	"audiencematch/pipeline/source"
	"audiencematch/pipeline/spill"
)

// The consent join, partitioned so that memory does not grow with the
// audience. Workers parse batches of consent events in parallel and spill
// the in-scope ones to partitions by a hash of the user id; then they parse
// batches of users and spill them the same way. The join then takes one
// partition at a time per worker: it folds the partition's events into each
// user's effective event, decides each of its user rows, normalizes and
// hashes the numbers that count, and spills those holders again, into
// buckets by identifier range (see idBucketer), for the write stage.
// Nothing depends on which worker took which batch or partition: rejects
// are put back in batch order, counts are sums, and whatever reads a
// partition sorts it.

// spillParts is the number of partitions of users and events, and of
// sub-partitions of whatever is split: enough that a partition's users fit
// the join's index in the processor's cache at the largest audiences this
// job is sized for (docs/PERFORMANCE.md, docs/DESIGN.md).
const (
	spillBits  = 10
	spillParts = 1 << spillBits
)

// bucketParts is the number of buckets of holders and of snapshot lines
// that the join writes and the write stage reads in order. Fewer than the
// partitions: the join appends to every bucket's buffer at random, and its
// buffers must stay in the processor's cache rather than be fresh memory to
// fault in (docs/PERFORMANCE.md). The output does not depend on it.
const (
	bucketBits  = 8
	bucketParts = 1 << bucketBits
)

// eventWorker is one worker's state while consent events are read.
type eventWorker struct {
	rows    int64
	classes [len(consent.EventClassNames)]int64
	out     *spill.Writer
}

func (r *run) readConsent(ctx context.Context) error {
	// Compiled while the inputs are read (in a run and in a shard alike),
	// the numbering metadata is ready when the join first normalizes:
	// otherwise one worker compiles it there while every other waits.
	go hashing.Preload()
	t, err := r.cfg.Source.Open(ctx, source.TableConsent, source.EventColumns)
	if err != nil {
		return fmt.Errorf("consent events: %w", err)
	}
	defer t.Close()
	if r.events, err = r.newSpill("events.spill", spillParts, false); err != nil {
		return err
	}
	rules, sh := r.cfg.Rules, r.cfg.Shard
	workers := make([]eventWorker, r.cfg.Workers)
	for i := range workers {
		workers[i].out = r.events.Writer()
	}
	rejects := r.orderedRejects()
	err = r.eachBatch(ctx, t, "consent events", cEvents, func(w int, b *source.Batch) {
		ew := &workers[w]
		var rej []rejectRow
		for i := range b.Rows {
			row := &b.Rows[i]
			if row.Reject != "" {
				if sh.owns("", row.Line) {
					ew.rows++
					ew.classes[consent.ClassMalformed]++
					rej = append(rej, rejectRow{source.TableConsent, row.Line, row.Reject, row.Raw})
				}
				if f := row.Fields; f != nil { // what could still be read (Row.Reject)
					r.failClosed(ew, f[1], f[2], row.Line)
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
					rej = append(rej, rejectRow{source.TableConsent, row.Line, re.Reason, fieldsText(f)})
				}
				r.failClosed(ew, e.UserID, e.Purpose, row.Line)
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
			p := r.partOf(e.UserID)
			ew.out.Put(p, appendEvent(ew.out.Buf(p), &e))
		}
		rejects.done(b.Seq, rej)
	})
	for i := range workers {
		err = errors.Join(err, workers[i].out.Flush())
	}
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
	r.m.AddInput(source.TableConsent, r.cfg.Source.Name(source.TableConsent), t.Digest(), c.Rows)
	return nil
}

// failClosed spills, for a malformed consent row of which userID and
// purpose could be read ("" for what could not), the mark that makes its
// user's consent unreadable, when the row FailsClosed (MATCHING.md section
// 2, "Fail closed (amendment 1)"). The mark goes to the shard that owns the
// user, wherever the row is counted and kept as a reject (the shard of its
// line, when userID is ""); it is no event, and counts as none.
func (r *run) failClosed(ew *eventWorker, userID, purpose string, line int64) {
	if !r.cfg.Rules.FailsClosed(userID, purpose) || !r.cfg.Shard.owns(userID, line) {
		return
	}
	p := r.partOf(userID)
	ew.out.Put(p, appendUnreadable(ew.out.Buf(p), userID))
}

// partOf is the partition of a user id's events and rows.
func (r *run) partOf(userID string) int {
	return int(maphash.String(r.seed, userID) % spillParts)
}

// subOf is a user's sub-partition of its partition, when that is split.
func (r *run) subOf(userID string) int {
	return int(maphash.String(r.seed, userID) / spillParts % spillParts)
}

// appendEvent spills an in-scope event: what the effective-event rule needs.
func appendEvent(b []byte, e *consent.Event) []byte {
	b = spill.AppendStr(spill.AppendStr(b, e.UserID), e.EventID)
	b = binary.AppendVarint(b, e.OccurredAt.Unix())
	b = binary.AppendUvarint(b, uint64(e.OccurredAt.Nanosecond()))
	b = binary.AppendVarint(b, e.PolicyVersion)
	return append(b, byte(e.Action))
}

// unreadableAction is the action byte of a spilled fail-closed mark
// (failClosed): no action of the contract's, so that the mark rides in the
// events spill with the user's events and reaches the same join partition.
const unreadableAction = consent.Action(0)

// appendUnreadable spills a fail-closed mark for userID: an event with no
// id, time or policy and unreadableAction.
func appendUnreadable(b []byte, userID string) []byte {
	return append(spill.AppendStr(spill.AppendStr(b, userID), ""), 0, 0, 0, byte(unreadableAction))
}

func readEvent(rd *spill.Reader, e *consent.Event) {
	e.UserID, e.EventID = rd.Str(), rd.Str()
	sec := rd.Varint()
	e.OccurredAt = time.Unix(sec, int64(rd.Uvarint()))
	e.PolicyVersion = rd.Varint()
	e.Action = consent.Action(rd.Byte())
}

// readUser decodes a user row the users stage spilled: line, user id,
// phone, country.
func readUser(rd *spill.Reader) (line int64, userID, phone, country string) {
	return int64(rd.Uvarint()), rd.Str(), rd.Str(), rd.Str()
}

// userWorker is one worker's state while users are read.
type userWorker struct {
	rows     int64
	excluded map[string]int64
	guard    *leakguard.Writer
	out      *spill.Writer
}

func (r *run) readUsers(ctx context.Context) error {
	t, err := r.cfg.Source.Open(ctx, source.TableUsers, source.UserColumns)
	if err != nil {
		return fmt.Errorf("users: %w", err)
	}
	defer t.Close()
	if r.users, err = r.newSpill("users.spill", spillParts, false); err != nil {
		return err
	}
	sh := r.cfg.Shard
	workers := make([]userWorker, r.cfg.Workers)
	for i := range workers {
		workers[i] = userWorker{excluded: map[string]int64{}, guard: r.guard.Writer(), out: r.users.Writer()}
	}
	rejects := r.orderedRejects()
	err = r.eachBatch(ctx, t, "users", cUsers, func(w int, b *source.Batch) {
		uw := &workers[w]
		var rej []rejectRow
		for i := range b.Rows {
			row := &b.Rows[i]
			if row.Reject != "" {
				if sh.owns("", row.Line) {
					uw.rows++
					uw.excluded[consent.ReasonMalformedRow]++
					rej = append(rej, rejectRow{source.TableUsers, row.Line, row.Reject, row.Raw})
				}
				continue
			}
			userID, phone, country := row.Fields[0], row.Fields[1], row.Fields[2]
			if !sh.owns(userID, row.Line) {
				continue
			}
			uw.rows++
			if userID == "" {
				uw.excluded[consent.ReasonMalformedRow]++
				rej = append(rej, rejectRow{source.TableUsers, row.Line, consent.RejectEmptyUserID, fieldsText(row.Fields)})
				continue
			}
			uw.guard.Add(userID)
			uw.guard.AddPhone(phone)
			p := r.partOf(userID)
			buf := binary.AppendUvarint(uw.out.Buf(p), uint64(row.Line))
			uw.out.Put(p, spill.AppendStr(spill.AppendStr(spill.AppendStr(buf, userID), phone), country))
		}
		rejects.done(b.Seq, rej)
	})
	for i := range workers {
		err = errors.Join(err, workers[i].out.Flush(), workers[i].guard.Flush())
	}
	if err != nil {
		return err
	}
	u := &r.m.Users
	for i := range workers {
		u.Rows += workers[i].rows
		addCounts(u.Excluded, workers[i].excluded)
	}
	r.m.AddInput(source.TableUsers, r.cfg.Source.Name(source.TableUsers), t.Digest(), u.Rows)
	return nil
}

// joinWorker is one worker's state while partitions are joined.
type joinWorker struct {
	hasher   *hashing.Hasher
	cache    *workerCache // oprf-ristretto255 only (idcache.go)
	users    userIndex
	states   []consent.Effective
	seen     []bool
	evBuf    []byte
	usBuf    []byte
	ids      *spill.Writer
	snap     *spill.Writer
	guard    *leakguard.Writer
	excluded map[string]int64
	used     int64 // in-scope events of users with a row
	unknown  int64 // in-scope events of users without one
	line     []byte
	id       []byte
}

// join decides every user row's consent, partition by partition, and
// spills the snapshot lines and the holders: user rows whose consent is
// valid (they may be exported) or withdrawn or unreadable (they block their
// number: consent.Status.Blocks) and whose number is valid, under its
// identifier.
func (r *run) join(ctx context.Context) error {
	defer r.dropInputSpills()
	var err error
	keep := r.cfg.Shard.Count > 0 // the commit reads a shard's spills
	// Grouped unless kept (digested): the commit reads a shard's.
	if r.ids, err = r.newSpill("ids.spill", bucketParts, keep); err != nil {
		return err
	}
	if r.snap, err = r.newSpill("snapshot.spill", bucketParts, keep); err != nil {
		return err
	}
	if err := r.openIDCache(); err != nil {
		return err
	}
	bucket := newIDBucketer(r.cfg.Scheme, bucketParts)
	workers := make([]joinWorker, r.cfg.Workers)
	var next atomic.Int64
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for w := range workers {
		jw := &workers[w]
		if err := r.newJoinWorker(jw); err != nil {
			return err
		}
		wg.Go(func() {
			for {
				p := int(next.Add(1) - 1)
				if p >= spillParts {
					return
				}
				if err := ctx.Err(); err != nil {
					errs[w] = err
					return
				}
				if err := r.joinPart(jw, p, bucket); err != nil {
					errs[w] = err
					return
				}
				r.events.Consumed(p)
				r.users.Consumed(p)
			}
		})
	}
	wg.Wait()
	for i := range workers {
		errs = append(errs, workers[i].ids.Flush(), workers[i].snap.Flush(), workers[i].guard.Flush(), workers[i].cache.flush())
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.saveIDCache()
	c := &r.m.ConsentEvents
	for i := range workers {
		jw := &workers[i]
		addCounts(r.m.Users.Excluded, jw.excluded)
		c.ByClass[consent.ClassUsed.String()] += jw.used
		c.ByClass[consent.ClassUnknownUser.String()] += jw.unknown
	}
	r.idSrc, r.snapSrc = []*spill.Spill{r.ids}, []*spill.Spill{r.snap}
	return nil
}

// newJoinWorker readies jw to join partitions into the run's ids and snap
// spills (created first) and its leak guard.
func (r *run) newJoinWorker(jw *joinWorker) (err error) {
	*jw = joinWorker{users: newUserIndex(), ids: r.ids.Writer(), snap: r.snap.Writer(),
		guard: r.guard.Writer(), excluded: map[string]int64{}}
	jw.hasher, err = hashing.NewHasher(r.cfg.Scheme, r.cfg.Key)
	jw.cache = r.idc.worker()
	return err
}

// joinPart joins partition p: whole, or split by more bits of the same
// hash of the user id when it is larger than the run's splitBytes
// (spillThresholds).
func (r *run) joinPart(jw *joinWorker, p int, bucket *idBucketer) error {
	if r.events.Size(p)+r.users.Size(p) <= r.spills.splitBytes {
		return r.joinOne(jw, r.events, r.users, p, bucket)
	}
	ev, err := spill.Split(filepath.Join(r.staging, fmt.Sprintf("events-%d.spill", p)), []*spill.Spill{r.events}, p, spillParts, func(b []byte) (int, int, error) {
		rd := spill.NewReader(b)
		var e consent.Event
		readEvent(&rd, &e)
		return len(b) - rd.Len(), r.subOf(e.UserID), rd.Err()
	})
	if err != nil {
		return err
	}
	defer ev.Drop()
	us, err := spill.Split(filepath.Join(r.staging, fmt.Sprintf("users-%d.spill", p)), []*spill.Spill{r.users}, p, spillParts, func(b []byte) (int, int, error) {
		rd := spill.NewReader(b)
		_, userID, _, _ := readUser(&rd)
		return len(b) - rd.Len(), r.subOf(userID), rd.Err()
	})
	if err != nil {
		return err
	}
	defer us.Drop()
	for q := range spillParts {
		if err := r.joinOne(jw, ev, us, q, bucket); err != nil {
			return err
		}
	}
	return nil
}

// joinOne joins partition p of the events and users spills ev and us.
func (r *run) joinOne(jw *joinWorker, ev, us *spill.Spill, p int, bucket *idBucketer) error {
	var err error
	if jw.evBuf, err = ev.AppendPart(jw.evBuf[:0], p); err != nil {
		return err
	}
	jw.users.reset()
	jw.states = jw.states[:0]
	rd := spill.NewReader(jw.evBuf)
	var e consent.Event
	for rd.More() {
		readEvent(&rd, &e)
		h := maphash.String(r.seed, e.UserID)
		k, ok := jw.users.get(h, e.UserID)
		if !ok {
			k = jw.users.add(h, e.UserID) // the id's memory is evBuf's, kept until the next partition
			jw.states = append(jw.states, consent.Effective{})
		}
		if e.Action == unreadableAction {
			jw.states[k].AddUnreadable()
			continue
		}
		jw.states[k].Add(&e) // EventID is kept in evBuf, which lives until the next partition
	}
	if err := rd.Err(); err != nil {
		return err
	}
	jw.seen = slices.Grow(jw.seen[:0], len(jw.states))[:len(jw.states)]
	clear(jw.seen)
	if jw.usBuf, err = us.AppendPart(jw.usBuf[:0], p); err != nil {
		return err
	}
	rules := r.cfg.Rules
	rd = spill.NewReader(jw.usBuf)
	var held int64
	for rd.More() {
		line, userID, phone, country := readUser(&rd)
		status, eventID := consent.NoConsent, ""
		if k, ok := jw.users.get(maphash.String(r.seed, userID), userID); ok {
			jw.seen[k] = true
			status, eventID = rules.Decide(&jw.states[k]), jw.states[k].ID()
		}
		sum := jw.snapshotLine(userID, status, eventID)
		sb := snapBucket(sum[:])
		jw.snap.Put(sb, append(jw.snap.Buf(sb), sum[:]...))
		if status != consent.Valid && !status.Blocks() {
			jw.excluded[status.String()]++
			continue
		}
		held++
		e164, nerr := hashing.Normalize(phone, country)
		if nerr != nil {
			if status.Blocks() { // excluded for its consent, and blocking no number
				jw.excluded[status.String()]++
			} else {
				jw.excluded[consent.ReasonInvalidPhone]++
			}
			continue
		}
		if e164 != phone { // a number typed in E.164 is registered already (users stage)
			jw.guard.Add(e164)
		}
		if jw.cache != nil {
			jw.id = jw.cache.appendID(jw.hasher, jw.id[:0], e164)
		} else {
			jw.id = jw.hasher.AppendID(jw.id[:0], e164)
		}
		b := bucket.of(jw.id)
		buf := spill.AppendStr(jw.ids.Buf(b), bytesString(jw.id))
		buf = append(spill.AppendStr(spill.AppendStr(buf, userID), eventID), byte(status))
		jw.ids.Put(b, binary.AppendUvarint(buf, uint64(line)))
	}
	if err := rd.Err(); err != nil {
		return err
	}
	for k := range jw.states {
		if jw.seen[k] {
			jw.used += int64(jw.states[k].InScope)
		} else {
			jw.unknown += int64(jw.states[k].InScope)
		}
	}
	r.cfg.Progress.add(cHolders, held)
	r.cfg.Progress.add(cNormalized, held)
	return nil
}

// userIndex numbers the users of a join partition. It is a table keyed by
// a 64-bit hash of the user id rather than a map from the id: a map's
// probes compare strings out of cache, and even a map from the hash costs
// more per lookup than a flat table (docs/PERFORMANCE.md). The hash is
// random already, so the table is open addressing in flat arrays: the
// slot is the hash's top bits, probing on to the next slot. Two ids of one
// hash (the hash partOf uses, so a partition's share their low 10 bits:
// odds of about 3 in a billion for a partition of 10k users; the table
// keeps hash|1, so twice that) are told apart by the ids themselves, the
// later one going to a map of strings.
type userIndex struct {
	keys  []uint64 // by slot: hash|1 of the user there, 0 for none
	nums  []int32  // by slot: the user's number
	shift uint     // 64 - log2(len(keys))
	ids   []string // by number
	slots []int32  // by number: the user's slot, or -1 (in clash)
	clash map[string]int32
}

// userIndexSlots is a new index's size; it doubles as users are added,
// keeping at most half its slots full, and stays grown for the next
// partitions.
const userIndexSlots = 1 << 10

func newUserIndex() userIndex {
	return userIndex{keys: make([]uint64, userIndexSlots), nums: make([]int32, userIndexSlots),
		shift: uint(64 - bits.TrailingZeros(userIndexSlots)), clash: map[string]int32{}}
}

// reset empties the index for the next partition. The table stays as
// large as the largest partition made it, so a small partition after a
// large one (one just under splitBytes, then the sub-partitions of a split
// one: 500k users, then 500 a sub-partition, a thousand times) empties
// only the slots it filled rather than the whole table.
func (x *userIndex) reset() {
	if 8*len(x.slots) < len(x.keys) {
		for _, i := range x.slots {
			if i >= 0 {
				x.keys[i] = 0
			}
		}
	} else {
		clear(x.keys)
	}
	clear(x.clash)
	x.ids, x.slots = x.ids[:0], x.slots[:0]
}

// slot is where hash h is, or the empty slot where it would go.
func (x *userIndex) slot(h uint64) (int, bool) {
	key, mask := h|1, len(x.keys)-1
	for i := int(h >> x.shift); ; i = (i + 1) & mask {
		switch x.keys[i] {
		case key:
			return i, true
		case 0:
			return i, false
		}
	}
}

// get returns the number of user id (whose hash is h), if added.
func (x *userIndex) get(h uint64, id string) (int32, bool) {
	i, ok := x.slot(h)
	if !ok {
		return 0, false
	}
	if k := x.nums[i]; x.ids[k] == id {
		return k, true
	}
	k, ok := x.clash[id]
	return k, ok
}

// add numbers a user id not yet added, from 0 up; id must stay valid
// until reset.
func (x *userIndex) add(h uint64, id string) int32 {
	k := int32(len(x.ids))
	x.ids = append(x.ids, id)
	if 2*len(x.ids) > len(x.keys) {
		x.grow()
	}
	if i, taken := x.slot(h); taken {
		x.clash[id] = k
		x.slots = append(x.slots, -1)
	} else {
		x.keys[i], x.nums[i] = h|1, k
		x.slots = append(x.slots, int32(i))
	}
	return k
}

// grow doubles the table, placing its users again.
func (x *userIndex) grow() {
	keys, nums := x.keys, x.nums
	x.keys, x.nums = make([]uint64, 2*len(keys)), make([]int32, 2*len(nums))
	x.shift--
	for i, key := range keys {
		if key != 0 {
			j, _ := x.slot(key) // key (h|1) has h's top bits
			x.keys[j], x.nums[j] = key, nums[i]
			x.slots[nums[i]] = int32(j)
		}
	}
}

// snapBucket is the snapshot bucket of a line digest, its first bucketBits
// bits: buckets in order hold the digests in order.
func snapBucket(sum []byte) int { return int(binary.BigEndian.Uint32(sum) >> (32 - bucketBits)) }

// snapSub is a line digest's sub-bucket in a split bucket: its next
// spillBits bits.
func snapSub(sum []byte) int {
	return int(binary.BigEndian.Uint32(sum)>>(32-bucketBits-spillBits)) & (spillParts - 1)
}

// dropInputSpills removes the spilled events and users once joined.
func (r *run) dropInputSpills() {
	for _, s := range []*spill.Spill{r.events, r.users} {
		if s != nil {
			s.Drop()
		}
	}
	r.events, r.users = nil, nil
}

// idBucketer maps an identifier to its bucket so that every identifier of
// a bucket sorts before every identifier of the next: the bucket is a
// monotone function of the identifier's first three bytes, ranked in the
// scheme's alphabet (all bytes, hex digits or base64), so buckets are also
// about equally full.
type idBucketer struct {
	rank  [256]uint64
	base  uint64 // the alphabet's size
	parts uint64
}

func newIDBucketer(scheme hashing.Scheme, parts int) *idBucketer {
	var alphabet string
	switch {
	case scheme.Binary():
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(i)
		}
		alphabet = string(b)
	case scheme == hashing.UID2:
		alphabet = "+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" // ASCII order
	default:
		alphabet = "0123456789abcdef"
	}
	a := uint64(len(alphabet))
	bk := &idBucketer{base: a, parts: uint64(parts)}
	for i := 0; i < len(alphabet); i++ {
		bk.rank[alphabet[i]] = uint64(i)
	}
	return bk
}

func (bk *idBucketer) of(id []byte) int {
	b := bk.base
	n := (bk.rank[id[0]]*b+bk.rank[id[1]])*b + bk.rank[id[2]]
	return int(n * bk.parts / (b * b * b))
}

// sub is the identifier's sub-bucket of its bucket, of spillParts, from
// its first six bytes ranked: of(id)*parts+sub(id) is a monotone function
// of the identifier too, so a bucket split by sub and read sub-bucket after
// sub-bucket stays in order. (of's bucket is this finer one's quotient:
// every scale involved is a power of two.)
func (bk *idBucketer) sub(id string) int {
	b := bk.base
	n := uint64(0)
	for i := range 6 {
		n = n*b + bk.rank[id[i]]
	}
	hi, lo := bits.Mul64(n, bk.parts*spillParts)
	q, _ := bits.Div64(hi, lo, b*b*b*b*b*b)
	return int(q % spillParts)
}

// snapshotLine hashes one user row's consent decision, the line
// "user_id \t status \t effective_event_id \n", reusing the worker's buffer.
func (jw *joinWorker) snapshotLine(userID string, status consent.Status, eventID string) [sha256.Size]byte {
	b := append(jw.line[:0], userID...)
	b = append(append(append(b, '\t'), status.String()...), '\t')
	b = append(append(b, eventID...), '\n')
	jw.line = b
	return sha256.Sum256(b)
}
