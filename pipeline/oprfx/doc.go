// Package oprfx is the blind-evaluation exchange of the oprf-ristretto255
// scheme (MATCHING.md section 4, amendment 2): how a destination obtains the
// identifiers of numbers it already holds without the exporter seeing them,
// by files, as the nightly job's other artefacts are exchanged.
//
// # Files
//
// Every file is Parquet, rows in the numbers file's order (the numbers
// whose phone is not a valid number, which cannot be blinded, left out):
//
//	request   one column "blinded", FIXED_LEN_BYTE_ARRAY(32):
//	          SerializeElement(Blind(E.164)) (RFC 9497 sections 3.3.1 and 4.1)
//	response  one column "evaluated", FIXED_LEN_BYTE_ARRAY(32), row i the
//	          server's BlindEvaluate of request row i
//	secrets   the platform's own, mode 0600: "row" INT64 (the numbers file's
//	          data row, from 0) and "blind" FIXED_LEN_BYTE_ARRAY(32)
//	          (SerializeScalar of the blind), with the numbers file's and the
//	          request's SHA-256 in its key-value metadata
//	ids       the numbers file's columns, as text, then "id",
//	          FIXED_LEN_BYTE_ARRAY(64): the identifier (Finalize)
//
// A request or response column may be required or optional (as pyarrow
// writes it) but holds no null; the platform need not use this program, any
// RFC 9497 implementation of ristretto255-SHA512 in mode OPRF (0x00) with
// input = the E.164 string's bytes produces the same identifiers.
//
// # The platform's side
//
// Blind normalizes the numbers file's phone column (with its optional
// country column) exactly as a run does (MATCHING.md section 3), blinds each
// valid number with a fresh random scalar, and writes the request and the
// secrets. Finalize unblinds the response into the identifiers, beside the
// numbers file's columns. Match keeps the rows of an ids file whose
// identifier is in a published snapshot, each part checked against the
// SHA-256 its manifest lists.
//
// # The exporter's side
//
// Evaluate answers a request under the run lock of the state directory:
// it refuses the whole request (errkind.ErrRejected, exit 77) when its
// elements and those answered for the destination in the 24 hours before
// would exceed the registry's oprf_max_evaluations (none set: every
// request is refused), and the whole request (errkind.ErrData) when an
// element is not the canonical encoding of a ristretto255 element other
// than the identity (RFC 9497 section 3.3.1). Otherwise it evaluates the
// elements on every core, writes the response and appends an
// oprf_evaluated record (package consent/audit) before the response takes
// its name. A refusal is recorded too, with its reason. No element is ever
// logged or recorded: the log holds counts and digests.
package oprfx
