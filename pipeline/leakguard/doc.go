// Package leakguard is the last check before a run publishes. It
// guarantees two things about the directory it checks:
//
//  1. Nothing of the inputs' personal data is in what the destination
//     receives: no phone as a user typed it, no E.164 string, no user id
//     and no form of the destination's key (raw, hex or base64), in any
//     file, in any field, in any byte.
//  2. Nothing a user typed can fail a run. A user may type "ads_matching",
//     the destination's name, the cutoff date, a file's name, or another
//     user's sha256-e164 or uid2 id as their phone; every one of those is
//     rightly published, and the run (its withdrawals with it) goes ahead.
//
// Check returns a *LeakError when the first does not hold, naming the file
// and where in it, never the value.
//
// # How
//
// The guard checks what a run writes by construction, byte for byte, and
// compares with the input only where input could have gone, the ids:
//
//   - manifest.json is exactly the JSON of a manifest.Manifest (no other
//     field, no field twice, no other spelling) whose fields from the
//     configuration equal Expect.Manifest's, whose every other string has
//     the shape of what the run puts there (a run id, a SHA-256, a reason's
//     name, a part's path), and whose files are the Parquet files
//     published, each once, with their rows and bytes;
//   - a Parquet file is accounted for byte by byte: its footer is the one
//     the part writer (idfile, under Expect.Layout) gives a file of its
//     scheme and key_id (schema, created_by, key-value metadata) but for
//     its row groups, each one column chunk of data pages (no dictionary)
//     whose headers, column index and offset index re-encode to their own
//     bytes; only offsets, counts and the bounds of the ids vary;
//   - every id, decoded from every data page, has the scheme's exact shape,
//     is not the destination's key, and is not a user id or E.164 string
//     of the input nor, under a keyed scheme, a phone as typed; the ids
//     decoded are as many as the data pages' headers count, and every
//     bound the statistics and column index give is the least or greatest
//     id it describes (the column index's truncated as Parquet truncates
//     it);
//   - any other file (the run writes none) is scanned raw: no phone as
//     typed, E.164 string or user id of 8 bytes or more may occur in it.
//     Strings made only of 0-9 and a-f are left out: at a billion users
//     they would match hex by chance, often.
//
// The manifest and the Parquet files' structures are never searched for
// input strings; that is what keeps guarantee 2. For the same reason a
// typed phone (Writer.AddPhone) is compared only with the ids of a keyed
// scheme: anyone can compute the id of any number under an unkeyed scheme,
// and type it. User ids are assigned, not typed, so an id equal to one is a
// leak under every scheme.
//
// # Needles
//
// A string registered with Add or AddPhone is kept only as hashes
// (needles): XXH3 64 of the string, seeded with the guard's salt. The
// hashes only have to be equal for equal strings and rarely equal
// otherwise: a collision is a false alarm that stops the run, never a leak
// let through.
//
// The needles are spilled to disk (package spill) in Parts partitions:
//
//   - partitions 0 to 63 hold the exact hashes of strings as long as an
//     identifier of some scheme (hashing.Scheme.IDLen), 8 bytes
//     little-endian each, by the hash's top 6 bits; a typed phone's is
//     XORed with a constant so that only a keyed scheme's ids look for it;
//   - partitions 64 to 79 hold the raw scan's prefix needles, by the
//     string's hash: the 32-bit hash of the string's first 8 bytes (the
//     top half of MurmurHash3's 64-bit finalizer of those bytes, as a
//     little-endian uint64, XOR the salt), the low 32 bits of the string's
//     hash, both little-endian, and the string's length as a uvarint.
//
// The raw bytes to scan are few, so Check indexes their 8-byte windows by
// the same 32-bit hash, streams the prefix needles past them, and hashes a
// string where the window's hash agrees: both hashes must agree by chance
// for a false alarm, once in 2^64 such pairs.
//
// # Passes
//
// Check loads the exact hashes a pass at a time, each pass as many groups
// as 128 MiB of hashes holds, and decodes every id in every pass; the first
// pass also checks the ids' shape, count and bounds. Almost no input string
// is as long as an id, so a run has one pass, and memory stays flat as the
// audience grows.
//
// # Shards
//
// Shards of one run are separate processes that each register their own
// users' strings. They share the salt (Salt of the run's configuration
// digest), so their needles merge. A shard's guard is Durable: its spill is
// one digested file (Spill: its Sum and Index), which the shard leaves with
// the longest string it registered (MaxLen) for the commit. The commit
// opens each with spill.Open and hands it over with AddShard, then Checks
// what it is about to publish against the needles of every shard.
package leakguard
