// Package spill keeps records on disk in partitions, so that what a process
// holds in memory at once is one partition rather than all of them.
//
// # Records
//
// A record is a byte string whose layout its writer and reader agree on;
// the spill stores records back to back and never looks inside them. The
// fields of the pipeline's records are framed as AppendStr and Reader
// frame them:
//
//	string    uvarint(len(s)) || s
//	unsigned  uvarint (encoding/binary.AppendUvarint)
//	signed    zigzag varint (encoding/binary.AppendVarint)
//	byte      the byte
//	fixed     n bytes, n known to the reader
//
// A record has no length or type of its own: a reader decodes a
// partition's records one after the other, knowing their layout.
//
// # Chunks and files
//
// A Writer appends each record to its buffer for the record's partition
// (Buf, then Put) and writes the buffer as one chunk once it holds 8 KiB or
// more (Flush writes what is left). A chunk is whole records of one
// partition: a record never spans chunks, so a chunk, or a run of chunks
// adjacent in one file, decodes on its own (EachChunk).
//
// A spill file is chunks back to back, with no header. A digested spill
// (Options.Digest) is the one file at the spill's path, written in the
// order it is hashed: Sum is the SHA-256 of the file. It is for a spill
// that outlives its process (a shard's, read by the commit): another
// process opens it with its index (Index, Open), which lists every
// partition's chunks, all uvarints:
//
//	index = parts, then for each partition: count, then count times: offset, length
//
// Any other spill gives each writer a file of its own, PATH.wN (N counting
// the files as they are created), so that workers never wait on each
// other's writes; the file at PATH stays empty. Such a writer gathers its
// full chunks and writes them 256 KiB at a time. Files are created
// owner-only (0600) and exclusively: New fails if PATH exists.
//
// # Groups
//
// A grouped spill (Options.GroupWriters) keeps its partitions in groups of
// consecutive partitions, a file per writer and group, and closes and
// removes a group's files as soon as every partition of the group has been
// consumed (Consumed), so that the kernel gets their pages back while the
// process still writes elsewhere: a stage that reads one spill while it
// writes the next then holds about one spill on disk, not two. A spill has
// at most 16 groups, fewer when the writers would otherwise have more than
// 128 files (a process may hold several grouped spills at once, within the
// usual limit of 1,024 open files) or when its partitions do not divide
// evenly; a digested spill, or one that would have a single group, is not
// grouped.
//
// # Order
//
// Once its writers have flushed without an error, a partition holds every
// record put to it, once. The order of its chunks, and so of its records,
// depends on timing (which writer wrote first): whoever reads a partition
// must not depend on the order of its records.
//
// # Concurrency and ownership
//
// A Writer belongs to one goroutine; any number of Writers may write to one
// spill at once. Until a writer has flushed, the chunks it holds are missing
// from the spill: nothing reads a spill before all its writers have flushed.
// Once they have, reading (Size, AppendPart, EachChunk, PartSize,
// AppendParts) and Consumed are safe for concurrent use.
//
// The buffer Buf returns is the writer's: append one record to it and hand
// it back with Put before the next Buf of the same partition. The strings a
// Reader returns share its buffer's memory: they are valid while that
// buffer is neither changed nor reused. EachChunk's fn gets a slice of the
// caller's buffer, valid until fn returns.
//
// Whoever creates or opens a spill closes it (Close) or removes it (Drop):
// Close leaves the files (a digested spill stays for another process to
// Open), Drop closes and removes them. A spill Split returns is its
// caller's to Drop.
//
// # Errors
//
// A spill keeps its first write error (Err, which Flush returns); after
// it, no writer creates a file and a digested spill writes nothing more.
// The errors of records (Reader.Err) and indexes (Open) that cannot be
// decoded wrap ErrCorrupt.
package spill
