// Package witness gets the audit log's checkpoints cosigned by witnesses,
// so that the operator cannot show different histories to different
// auditors: a witness cosigns a checkpoint only if it is consistent with
// every checkpoint of the log it cosigned before.
//
// # Protocol
//
// The client speaks C2SP tlog-witness (https://c2sp.org/tlog-witness): an
// HTTP POST of
//
//	old <size the witness last cosigned>
//	<consistency proof hash, base64>        one line per hash
//	<blank line>
//	<the checkpoint, a signed note>
//
// to <url>/add-checkpoint. A witness answers 200 with its cosignature
// lines, 409 (Content-Type text/x.tlog.size) with the size it knows when
// "old" is not it (the client then proves consistency from that size and
// asks once more), 403 for a log or key it does not know, 422 for a proof
// that does not verify: a rollback or a fork is refused there.
//
// # Cosignatures
//
// A cosignature (C2SP tlog-cosignature, https://c2sp.org/tlog-cosignature)
// is a signed-note signature line "— <witness name> <base64>" whose
// base64 decodes to a 4-byte key hash, an 8-byte big-endian UNIX time t
// and a 64-byte Ed25519 signature of
//
//	cosignature/v1
//	time <t, decimal>
//	<the checkpoint's text: origin, size, root hash lines>
//
// The witness's verifier key is "<name>+<key hash, 8 hex>+<base64 of 0x04
// || the 32-byte Ed25519 public key>", the key hash being the first 4 bytes
// of SHA-256(name || "\n" || 0x04 || public key). x/mod's note parses only
// Ed25519 (0x01) keys; CosignatureVerifier is the note.Verifier of 0x04.
//
// # Where cosignatures are kept
//
// The cosignatures are added to the checkpoint file (STATE/audit/checkpoint)
// as further signature lines after the log's own. Witnesses are configured
// in STATE/witnesses.yaml (see Config). A run asks every configured witness
// whose cosignature the current checkpoint lacks, under the run lock, after
// its last append; a witness that is down or refuses is reported, never
// fails the run, and is asked again by the next run.
package witness
