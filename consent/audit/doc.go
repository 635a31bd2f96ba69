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
//
// Version 2 differs from 1 in three ways: a run_committed record names its
// published directory relative to its destination's delivery root
// ("<destination>/dt=<date>/run=<id>", see PublishedRel), so that a copy
// of the state and the delivered files verifies anywhere; it names the
// registry entry that authorized the run (Authorization: organization,
// relationship, purposes, lawful basis, retention, and the registry file's
// SHA-256), so the GDPR Art. 30 recipient is provable per run; and the
// prune type exists.
//
// The checkpoint may carry, after the log's signature, witnesses'
// cosignatures (C2SP tlog-cosignature); package witness adds and checks
// them.
package audit
