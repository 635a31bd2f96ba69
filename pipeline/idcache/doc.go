// Package idcache is the private cache of oprf-ristretto255 identifiers a
// run keeps under its state directory (issue 26): an evaluation costs about
// a thousand HMACs, so a nightly run evaluates only the numbers it has not
// seen under the current key.
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
// STATE/idcache/<destination>.cache, mode 0600 in a directory of mode 0700:
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
// A Builder collects the entries a run looks up (hits and fresh
// evaluations alike) in a spill partitioned by the tag's first byte, and
// Write sorts one partition at a time into the next file, written beside
// the old one and renamed over it. The new cache holds exactly the numbers
// the run evaluated, so a number that has left the input leaves the cache
// with the next run.
package idcache
