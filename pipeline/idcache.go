package pipeline

import (
	"path/filepath"
	"sync/atomic"

	"audiencematch/hashing"
	"audiencematch/pipeline/idcache"
)

// runCache is a run's private identifier cache (package idcache): under
// oprf-ristretto255 an evaluation is far dearer than an HMAC, so the join
// evaluates only the numbers the previous run under the same key_id did
// not.
type runCache struct {
	key     idcache.Key
	keyID   string
	path    string
	cache   *idcache.Set
	next    *idcache.Builder
	hits    atomic.Int64
	evals   atomic.Int64
	written int64
	saved   chan struct{} // closed when saveIDCache is done; nil before it starts
}

// openIDCache opens the cache for an oprf-ristretto255 run (nil otherwise).
// A cache that cannot be trusted is discarded and logged, never used.
func (r *run) openIDCache() error {
	if r.cfg.Scheme != hashing.OPRFRistretto255 {
		return nil
	}
	rc := &runCache{keyID: r.cfg.KeyID(), path: idcache.Path(r.cfg.State, r.cfg.Destination)}
	if s := r.cfg.Shard; s.Count > 0 {
		rc.path = idcache.ShardPath(r.cfg.State, r.cfg.Destination, s.Index, s.Count)
	}
	var err error
	if rc.key, err = idcache.DeriveKey(r.cfg.Key, r.cfg.Destination); err != nil {
		return err
	}
	var why []string
	if rc.cache, why, err = idcache.OpenSet(rc.path, rc.key, rc.keyID); err != nil {
		return err
	}
	for _, w := range why {
		r.cfg.Log.Warn("discarded the identifier cache: every number is evaluated again", "reason", w)
	}
	if rc.next, err = idcache.NewBuilder(filepath.Join(r.staging, "idcache.spill")); err != nil {
		rc.cache.Close()
		return err
	}
	r.idc = rc
	return nil
}

// workerCache is one join worker's view of the run's cache.
type workerCache struct {
	rc     *runCache
	tagger *idcache.Tagger
	next   *idcache.Writer
}

func (rc *runCache) worker() *workerCache {
	if rc == nil {
		return nil
	}
	wc := &workerCache{rc: rc, tagger: idcache.NewTagger(rc.key)}
	if rc.next != nil {
		wc.next = rc.next.Writer()
	}
	return wc
}

// appendID appends e164's identifier: from the cache (which marks it for
// the next cache), or evaluated with h on a miss and added to the next
// cache.
func (wc *workerCache) appendID(h *hashing.Hasher, dst []byte, e164 string) []byte {
	tag := wc.tagger.Tag(e164)
	if id := wc.rc.cache.Lookup(&tag); id != nil {
		wc.rc.hits.Add(1)
		return append(dst, id...)
	}
	n := len(dst)
	dst = h.AppendID(dst, e164)
	wc.rc.evals.Add(1)
	if wc.next != nil {
		wc.next.Add(&tag, dst[n:])
	}
	return dst
}

func (wc *workerCache) flush() error {
	if wc == nil || wc.next == nil {
		return nil
	}
	return wc.next.Flush()
}

// saveIDCache starts replacing the cache with the identifiers this run
// used, once every worker has flushed, in the background of the write
// stage (closeIDCache waits for it). The cache only saves time: failing to
// write it is logged, and the next run evaluates again.
func (r *run) saveIDCache() {
	rc := r.idc
	if rc == nil {
		return
	}
	r.cfg.Log.Info("oprf identifiers", "cached", rc.hits.Load(), "evaluated", rc.evals.Load(), "cache_entries_before", rc.cache.Len())
	if rc.next == nil {
		return
	}
	rc.saved = make(chan struct{})
	go func() {
		defer close(rc.saved)
		n, _, err := rc.next.Write(rc.path, rc.key, rc.keyID, rc.cache)
		if err != nil {
			r.cfg.Log.Warn("could not write the identifier cache; the next run evaluates every number again", "error", err.Error())
			return
		}
		rc.written = n
	}()
}

// closeIDCache waits for the cache being written, then releases the old
// cache and the next one's spill; the run's cleanup calls it before it
// removes the staging directory.
func (r *run) closeIDCache() {
	rc := r.idc
	if rc == nil {
		return
	}
	if rc.saved != nil {
		<-rc.saved
	}
	if rc.next != nil {
		rc.next.Drop()
	}
	rc.cache.Close()
	r.idc = nil
}
