// Package idfile is the format of what a run publishes and keeps
// (MATCHING.md section 5): the Parquet parts of identifiers, with their
// deltas, and the private evidence file.
//
// A published run directory holds
//
//	part-NNNNN.parquet           the snapshot: every exported identifier, sorted, distinct
//	adds/part-NNNNN.parquet      identifiers new since the previous run of the delivery chain
//	removes/part-NNNNN.parquet   identifiers that run sent and this one does not
//	manifest.json                (package manifest)
//
// Every part has one required column "id": FIXED_LEN_BYTE_ARRAY(32) for
// hmac-sha256 (the raw HMAC), FIXED_LEN_BYTE_ARRAY(64) for oprf-ristretto255
// (the raw RFC 9497 output), a UTF-8 BYTE_ARRAY for the text schemes; no
// dictionary, no nulls; zstd pages; rows in increasing byte order across
// the parts of a set. A part holds at most Layout.RowsPerFile rows, in row
// groups of Layout.RowsPerGroup; a set has at least one part, empty if need
// be, so that readers find the schema. The footer's key-value metadata is
// exactly MetaScheme (the scheme) and, for a keyed scheme, MetaKeyID (the
// key_id), and created_by names the tool; a part's bytes depend only on its
// identifiers and these settings, so the same audience gives the same files.
//
// The evidence (EvidencePath, under the state directory, owner-only) ties
// each exported identifier to every valid holder of its number and the
// consent event that justified it: one EvidenceRow per holder, in
// identifier order, the primary holder (the one counted as exported) first.
// Its identifiers are hex for the binary schemes (EvidenceID). Where its pages are
// cut depends only on the rows, never on how the run split its work.
//
// Readers: Pages decodes a part's pages directly and refuses any other
// shape; PublishedIter and EvidenceIter stream a run's identifiers in order,
// checking that they increase, and EvidenceIter checks their tree against
// the run's audit record before it reports the end; SentIDs picks the one
// that a committed run's files allow.
package idfile
