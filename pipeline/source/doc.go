// Package source reads a run's two input tables (MATCHING.md section 1) as
// rows of text: from CSV or Parquet files (FileSource, OpenTable) or from
// a PostgreSQL COPY stream (NewCopyReader, used by package pg). Every
// format gives the same Row for the same data, so the run applies one set
// of rules to all of them.
//
// # Tables and columns
//
// The tables are users (UserColumns: user_id, phone, country) and
// consent_events (EventColumns: event_id, user_id, purpose, action,
// occurred_at, policy_version, source). A reader returns the columns asked
// for, in the order asked for, whatever their order in the input; columns
// beyond them are ignored. A column asked for that the input lacks is an
// errkind.ErrConfig error that names it, and so is a header that names a
// column twice. Names are exact: case and white space count (the error
// points out a near miss).
//
// Errors about a header name the columns asked for, positions and counts,
// never another cell of it: a file given without its header row has a
// user id and a phone number there, and errors reach logs and the audit
// log, which is kept for good.
//
// # CSV files
//
// RFC 4180, UTF-8, with a header row: the first line that is not blank (a
// byte order mark before it is dropped). After it, every physical line is
// one row, ended by LF or CRLF (the last one may lack it); a blank line is
// no row. Row.Line is the line's number in the file, from 1, the header's
// line and blank lines counted.
//
// RFC 4180 lets a quoted field span lines, but no column of the contract
// holds a line break, and honouring one is how one broken row loses
// thousands: an unterminated quote runs on until some later quote closes
// it, swallowing every row in between, a withdrawal among them. So a
// quote still open at the end of a line is broken quoting, and the row
// count is the line count. A line that cannot be read is a Row with
// Reject set, never an error, and reading goes on with the next line:
//
//	broken_csv_quoting  RejectBrokenQuoting  a quote open at the end of the line, a
//	                                         quote inside an unquoted field, or text
//	                                         after a closing quote
//	wrong_field_count   RejectFieldCount     not as many fields as the header has
//	record_too_long     RejectRecordTooLong  a line longer than 64 KiB (its text is
//	                                         not kept)
//
// A rejected row keeps its text (Row.Raw) and the columns asked for that
// can still be read: a field can be when it and every field before it are
// plain (unquoted, without a quote), and it is taken at the header's
// position; the others are "", and Fields is nil when none can be read.
// MATCHING.md section 2, amendment 1, acts on a malformed consent row's
// user_id and purpose whenever they can be read.
//
// A CSV file may be gzip- or zstd-compressed: the first bytes tell (RFC
// 1952's 1f 8b, RFC 8878's 28 b5 2f fd), not the name, and it is read
// through the decompressor; a damaged stream is an errkind.ErrData error.
// A file that is not CSV text otherwise (xz compressed, a ZIP archive,
// UTF-16, or a header that is not UTF-8) is an errkind.ErrConfig error
// that says how to fix it, and so is a file without a header row.
//
// # PostgreSQL COPY streams
//
// NewCopyReader reads the CSV that COPY ... TO STDOUT (FORMAT csv, HEADER)
// writes, with its quoting: the database closes every quote it opens, so
// a line break inside quotes is part of a value (a source of
// E'support ticket\n#123' is one field, not two broken rows). Row.Line is
// the record's number, the header being 1: the line the row has in a file
// of the same rows without line breaks in their values. Otherwise the
// rules of a CSV file hold.
//
// # Parquet files
//
// The columns are found by name among the file's top-level fields, and
// each one asked for must be a flat string, binary, integer or timestamp
// column (another type is an errkind.ErrConfig error). Values are turned
// into the text a CSV file would hold, so that both formats share one set
// of parsing rules: strings as they are, integers in decimal, timestamps
// in RFC 3339 in UTC (time.RFC3339Nano), null as "". Row.Line is the row's
// number in the file, from 1. No Parquet row is rejected: a file that
// cannot be decoded is an errkind.ErrData error.
//
// # Format detection
//
// The content decides: a file whose first four bytes are "PAR1" is
// Parquet, any other CSV (compressed or not); only a file named .parquet
// that is not Parquet is an errkind.ErrData error. OpenTable opens a file once and tells its
// format from a peek at its first bytes, so a pipe
// (--users <(zcat users.csv.gz)) loses nothing to the detection; a Parquet
// table, read from its footer, must be a regular file. A missing file is
// an errkind.ErrNoInput error.
//
// # Inputs
//
// FileSource takes, for each table, one of:
//
//   - a file (or a FIFO, such as <(zcat users.csv.gz));
//   - "-": standard input, CSV only (one table at most);
//   - a directory of parts, as Spark, Hive and warehouse exports write
//     them: every file under it, in name order (byte order of the path
//     relative to the directory), descending into Hive-style key=value
//     directories; files and directories whose name starts with "." or "_"
//     (_SUCCESS, _committed_*, _temporary/, .crc files) are skipped, and
//     any other directory is an errkind.ErrData error;
//   - a glob (path.Match syntax, quoted from the shell): the files it
//     matches, a matched directory as above; a glob matching nothing is an
//     errkind.ErrNoInput error;
//   - an object-store URL (s3://BUCKET/KEY, gs://, azblob://; package
//     objstore): one object, or every object under the key as a
//     directory's parts, or those its key's glob matches; file:///PATH is
//     PATH.
//
// A table's parts share one format, told by each part's first bytes: a
// part of another format is an errkind.ErrData error that names it. They
// are read one after the other as one table, each in parallel as a file
// is; a Parquet object is copied to a temporary file first, since Parquet
// is read from its footer. Row.Line counts on across parts: a part's
// lines follow the last line of the part before (for CSV parts, the lines
// of the files concatenated, each header counted).
//
// # Digests
//
// A reader's Digest is the hex SHA-256 of the input's bytes as read: the
// whole file, or the whole COPY stream with its header; for a compressed
// CSV file, its text once decompressed (zcat FILE | sha256sum), so that
// the run id does not depend on how the file was compressed. A table read
// in parts (a directory, a glob, an object prefix) is a PartLister: each
// part's digest, by its name relative to the input, and the table's digest
// is the SHA-256 of the parts' digests in hex, each followed by a line
// feed, in order (one part: its own). Where the input was kept does not
// enter the digest. The manifest records it for each table, and the same
// bytes give the same digest on every read.
//
// # Batches
//
// A run reads each table on every core. The CSV and COPY readers cut the
// input into blocks of whole lines or records in one goroutine, which
// also hashes it, and parse the blocks in whichever goroutines ask for
// batches; the Parquet reader of string columns decodes a batch at a time
// while other goroutines work on earlier ones. Batches gives a reader's
// batches (BatchReader), numbered in input order, so that work done on
// them in any order can be put back in order.
package source
