// Package idcache is the private cache of oprf-ristretto255 identifiers a
// run keeps under its state directory (issue 26): an evaluation is a
// scalar multiplication and a hash to the curve, far dearer than an HMAC
// (docs/PERFORMANCE.md), so a nightly run evaluates only the numbers it has
// not seen under the current key.
//
// An entry is keyed by a tag of the E.164 number, never the number itself:
//
//	cache key = HKDF-SHA256(IKM = skS, salt = "", info = "audiencematch/v1/idcache/" + destination, L = 32)
//	tag       = first 16 bytes of HMAC-SHA256(cache key, E.164 string with its '+')
//
// skS is derived from the master key (MATCHING.md section 4, amendment 2),
// so the cache key is too, and a new key_id gives a new cache key: the
// entries of the old key can no longer be found, and the file, which names
// its key_id, is discarded whole.
//
// # File
//
// STATE/idcache/<destination>.cache (a shard of a sharded run keeps its own,
// <destination>.shard-<i>-of-<n>.cache), and beside it, when a run changed little,
// its delta <destination>.cache.delta, both mode 0600 in a directory of mode
// 0700 and of this format:
//
//	header   "audiencematch-idcache/v1 " || key_id (16 hex digits) || "\n"   (42 bytes)
//	count    uint64, big-endian
//	entries  count times: tag (16 bytes) || id (64 bytes), sorted by tag, distinct
//	mac      HMAC-SHA256(cache key, everything before it)
//
// Open checks the header, the size and the MAC before it trusts a single
// entry; a file that fails any check, is of another key_id or may be read
// or written by group or others is discarded and the run evaluates every
// number again (doubt never exports a number: a wrong cached identifier
// would). The entries are mapped into memory read-only, so the cache costs
// the kernel's page cache rather than the run's heap.
//
// # Refresh
//
// Lookup (of the base, then the delta) marks each entry it finds in a
// bitmap. A Builder collects the run's fresh evaluations in a spill
// partitioned by the tag's first byte. Write then keeps the marked entries
// and adds the new ones, one sorted partition at a time, into a file written
// beside the old one and renamed over it: into a new delta, the base left as
// it is, when the new entries, the delta's and the base's unmarked ones
// together are at most a twentieth of the base (a night's churn, which then
// costs a file of its size rather than the whole cache); into a new base,
// the delta removed, otherwise. A run that found every entry and evaluated
// nothing writes nothing. So a number that has left the input leaves the
// cache by the compaction that follows, and at most a twentieth of the base
// is such numbers. A base that cannot be trusted is discarded with its
// delta.
package idcache
