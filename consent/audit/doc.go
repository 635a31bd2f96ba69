// Package audit is the tamper-evident consent audit log: an append-only
// sequence of records whose Merkle tree follows RFC 6962 / RFC 9162
// (golang.org/x/mod/sumdb/tlog), committed to by a C2SP tlog-checkpoint
// signed as a C2SP signed note with Ed25519 (golang.org/x/mod/sumdb/note,
// github.com/transparency-dev/formats/log).
//
// # Files, under <state>/audit
//
//	records.jsonl  one record per line; record i is leaf i of the tree
//	checkpoint     the latest signed checkpoint
//
// A checkpoint (https://c2sp.org/tlog-checkpoint) is the note text
//
//	<origin>
//	<size, decimal>
//	<root hash, standard base64>
//
// followed by a blank line and "— <origin> <base64 signature>". The origin
// is the signing key's name; auditors keep the verifier key printed by
// `audiencematch keys init`.
//
// # Records
//
// A record is one line of canonical JSON: the encoding/json encoding of
// Record (fields in declaration order, maps sorted by key, no white space,
// empty optional fields omitted), starting with "v":"audiencematch.audit/v1".
// A parser rejects anything that does not re-encode to the same bytes, so
// every record has exactly one representation and its leaf hash,
// SHA-256(0x00 || line without its newline), is unambiguous.
//
// Record types:
//
//	run_committed        a run was published; appended only after its output is
//	destination_refused  a run was refused before it read any user data
//	run_failed           a run failed; nothing was published
//	prune                retention removed files of earlier runs (package
//	                     pipeline/retention): retention_days, and for each
//	                     run id what went (published, evidence, rejects,
//	                     failed); appended before the files are removed
//
// A run_committed record carries the run id, tool version, config digest,
// as_of and consent rules, the SHA-256 of each input, the consent snapshot
// digest (SHA-256 over the sorted SHA-256 digests of the lines
// "user_id \t status \t effective_event_id \n", one per well-formed user
// row, status being valid, no_consent, withdrawn, expired or stale_policy),
// destination, scheme and key_id
// (never the key), the counts of the reconciliation, each published file's
// SHA-256 and row count, the manifest's SHA-256, the Merkle root of the
// run's sorted identifiers (so that absence can be proved: see
// MembershipProver) and the Merkle root of its private evidence.
package audit
