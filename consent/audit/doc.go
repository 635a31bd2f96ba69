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
// empty optional fields omitted), starting with its version,
// "v":"audiencematch.audit/v2" (RecordVersion). Readers also read v1
// records (RecordVersionV1), written by earlier versions, and refuse any
// other version. A parser rejects anything that does not re-encode to the
// same bytes, so every record has exactly one representation and its leaf
// hash, SHA-256(0x00 || line without its newline), is unambiguous.
//
// docs/AUDITORS.md is the byte-level specification an auditor implements:
// every member of every record type with its order and when it is written,
// the escaping and number rules, the derived values (run id, config digest,
// consent snapshot digest), the identifier and evidence trees' leaves for
// every scheme, the absence proof, and worked examples with real bytes.
//
// Record types:
//
//	run_committed        a run was published; appended only after its output is
//	destination_refused  a run was refused before it read any user data
//	run_failed           a run failed; nothing was published
//	prune                (v2) published runs were removed under retention_days
//	oprf_evaluated       (v2) an `oprf evaluate` request for an
//	                     oprf-ristretto255 destination was answered or refused
//
// Version 2 differs from 1 in four ways: a run_committed record names its
// published directory relative to its destination's delivery root
// ("<destination>/dt=<date>/run=<id>", see PublishedRel), so that a copy
// of the state and the delivered files verifies anywhere; it names the
// registry entry that authorized the run (Authorization: organization,
// relationship, purposes, lawful basis, retention, and the registry file's
// SHA-256), so the GDPR Art. 30 recipient is provable per run; and the
// prune and oprf_evaluated types exist.
//
// An oprf_evaluated record carries the destination, scheme
// (oprf-ristretto255), key_id, elements (the count of blinded elements the
// request held) and request_sha256 (the SHA-256 of the request file). An
// answered request also has response_sha256 (of the response file) and no
// reason; a refused one (over the destination's oprf_max_evaluations in the
// rolling 24 hours before its time, or with an invalid element) has a
// reason and no response. Neither holds an element: they are blinded
// numbers, and a count and digests are what an auditor needs to bound what
// the destination learned.
//
// The checkpoint may carry, after the log's signature, witnesses'
// cosignatures (C2SP tlog-cosignature); package witness adds and checks
// them.
package audit
