package audit

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
)

// File names under the audit directory and the keys directory.
const (
	RecordsFile    = "records.jsonl"
	CheckpointFile = "checkpoint"
	SignerFile     = "audit.key" // note signer key, owner-only
	VerifierFile   = "audit.pub" // note verifier key, public
)

// DefaultOrigin names the log in its checkpoints and its key.
const DefaultOrigin = "audiencematch.audit/v1"

// Log is the audit log, read whole into memory: one record per nightly run
// and destination is a few thousand a year.
type Log struct {
	dir        string
	lines      [][]byte
	records    []*Record
	unreadable []int64
	tree       MerkleTree
}

// ErrNoLog means the audit directory has no log yet.
var ErrNoLog = errors.New("no audit log")

// Open reads and parses every record. A torn last line (a crash while
// appending, before the checkpoint was signed) is an error here; OpenForAppend
// repairs it.
//
// A complete line that is not a readable record (not canonical, say, or of
// a version this tool does not read) does not stop the log: its bytes stay
// a leaf of the tree, so checkpoints still cover and verify it, Append adds
// after it, and Records holds a placeholder of type TypeUnreadable in its
// place. Unreadable lists such lines; VerifyLog fails on them.
func Open(dir string) (*Log, error) { return open(dir, false) }

// OpenForAppend is Open that first drops a torn, unterminated last line.
func OpenForAppend(dir string) (*Log, error) { return open(dir, true) }

func open(dir string, repair bool) (*Log, error) {
	l := &Log{dir: dir}
	path := filepath.Join(dir, RecordsFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	if n := len(b); n > 0 && b[n-1] != '\n' {
		if !repair {
			return nil, fmt.Errorf("%s: the last record is not terminated (torn write or truncation)", path)
		}
		cut := bytes.LastIndexByte(b, '\n') + 1
		if err := os.Truncate(path, int64(cut)); err != nil {
			return nil, fmt.Errorf("repair torn record in %s: %w", path, err)
		}
		b = b[:cut]
	}
	for i, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		line = line[:len(line)-1]
		r, err := ParseRecord(line)
		if err != nil {
			// A reader that refused the whole log here would stop every
			// later run from recording anything, failures included.
			r = &Record{Type: TypeUnreadable, Reason: SanitizeReason(fmt.Sprintf("record %d (line %d) cannot be read: %v", i, i+1, err))}
			l.unreadable = append(l.unreadable, int64(i))
		}
		if err := l.tree.Append(line); err != nil {
			return nil, err
		}
		l.lines = append(l.lines, line)
		l.records = append(l.records, r)
	}
	return l, nil
}

// Size is the number of records.
func (l *Log) Size() int64 { return l.tree.Size() }

// Records returns the parsed records, in log order: record i is leaf i.
// A line that cannot be read has a placeholder of type TypeUnreadable, with
// only its Type and Reason (why it cannot be read) set: callers that look
// for a type of record pass over it.
func (l *Log) Records() []*Record { return l.records }

// Unreadable returns the indexes of the lines that are not readable records,
// in log order; see Open.
func (l *Log) Unreadable() []int64 { return l.unreadable }

// Line returns record i's canonical bytes (its leaf data).
func (l *Log) Line(i int64) []byte { return l.lines[i] }

// Root is the tree hash at size n.
func (l *Log) Root(n int64) (tlog.Hash, error) { return l.tree.Root(n) }

// ProveRecord is the inclusion proof of record i in the tree of size n.
func (l *Log) ProveRecord(i, n int64) (tlog.RecordProof, error) { return l.tree.Prove(i, n) }

// ProveTree is the consistency proof between sizes n and t (n <= t).
func (l *Log) ProveTree(t, n int64) (tlog.TreeProof, error) { return tlog.ProveTree(t, n, &l.tree) }

// Committed returns the index of the run_committed record of runID, or -1.
func (l *Log) Committed(runID string) int64 {
	for i, r := range l.records {
		if r.Type == TypeRunCommitted && r.RunID == runID {
			return int64(i)
		}
	}
	return -1
}

// Append adds a record, stamping its time, makes it durable, then signs and
// writes a new checkpoint. A crash between the two leaves a record the
// checkpoint does not cover yet: the next Append signs it.
func (l *Log) Append(r *Record, signer note.Signer, now time.Time) error {
	r.Version = RecordVersion
	r.Time = now.UTC().Format(time.RFC3339Nano)
	line, err := r.Marshal()
	if err != nil {
		return fmt.Errorf("audit record: %w", err)
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return err
	}
	if err := fsutil.AppendDurable(filepath.Join(l.dir, RecordsFile), append(line, '\n'), 0o600); err != nil {
		return err
	}
	if err := l.tree.Append(line); err != nil {
		return err
	}
	l.lines = append(l.lines, line)
	l.records = append(l.records, r)
	return l.WriteCheckpoint(signer)
}

// Recover finishes what a crash interrupted, before a run reads the log: it
// drops a torn, unterminated last record (its append never completed, and
// no checkpoint covers it), and when the log holds records past its signed
// checkpoint (a crash between appending and signing) it signs them. It signs
// only a log that extends its verified checkpoint; anything else is left as
// it is and returned as an error, for audit verify to explain.
func Recover(dir string, signer note.Signer, verifier note.Verifier) error {
	l, err := OpenForAppend(dir)
	if err != nil {
		return err
	}
	cpBytes, err := os.ReadFile(filepath.Join(dir, CheckpointFile))
	if errors.Is(err, fs.ErrNotExist) {
		if l.Size() == 0 {
			return nil
		}
		return l.WriteCheckpoint(signer) // the first append died before its checkpoint
	}
	if err != nil {
		return err
	}
	cp, err := ParseCheckpoint(cpBytes, verifier)
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if cp.Size > uint64(l.Size()) {
		return fmt.Errorf("the audit log holds %d records but its checkpoint covers %d: run audit verify", l.Size(), cp.Size)
	}
	root, err := l.Root(int64(cp.Size))
	if err != nil {
		return err
	}
	if !bytes.Equal(root[:], cp.Hash) {
		return errors.New("the audit log's records do not match its signed checkpoint: run audit verify")
	}
	if cp.Size == uint64(l.Size()) {
		return nil
	}
	return l.WriteCheckpoint(signer)
}

// WriteCheckpoint signs the current tree and replaces the checkpoint file.
func (l *Log) WriteCheckpoint(signer note.Signer) error {
	cp, err := l.SignCheckpoint(signer)
	if err != nil {
		return err
	}
	return fsutil.WriteFileDurable(filepath.Join(l.dir, CheckpointFile), cp, 0o644)
}

// SignCheckpoint returns a signed C2SP checkpoint of the current tree.
func (l *Log) SignCheckpoint(signer note.Signer) ([]byte, error) {
	root, err := l.Root(l.Size())
	if err != nil {
		return nil, err
	}
	body := log.Checkpoint{Origin: signer.Name(), Size: uint64(l.Size()), Hash: root[:]}.Marshal()
	return note.Sign(&note.Note{Text: string(body)}, signer)
}

// ParseCheckpoint checks a checkpoint's signature with verifier (whose name
// is the log's origin) and parses it.
//
// Signatures must be in canonical (strict) base64: note decodes leniently,
// so a flipped padding bit would otherwise give a second byte form of the
// same checkpoint.
func ParseCheckpoint(b []byte, verifier note.Verifier) (*log.Checkpoint, error) {
	cp, _, n, err := log.ParseCheckpoint(b, verifier.Name(), verifier)
	if err != nil {
		return nil, err
	}
	for _, sig := range n.Sigs {
		if _, err := base64.StdEncoding.Strict().DecodeString(sig.Base64); err != nil {
			return nil, fmt.Errorf("signature of %s is not canonical base64", sig.Name)
		}
	}
	if len(cp.Hash) != tlog.HashSize {
		return nil, fmt.Errorf("checkpoint root has %d bytes", len(cp.Hash))
	}
	return cp, nil
}

// InitKeys creates the log's Ed25519 signing key under keysDir (owner-only)
// and its public verifier key; existing keys are kept. It returns the
// verifier key text and whether it was created now.
func InitKeys(keysDir, origin string) (vkey string, created bool, err error) {
	if err := os.MkdirAll(keysDir, 0o700); err != nil {
		return "", false, err
	}
	pub := filepath.Join(keysDir, VerifierFile)
	if b, err := os.ReadFile(pub); err == nil {
		if _, err := os.Stat(filepath.Join(keysDir, SignerFile)); err != nil {
			return "", false, fmt.Errorf("%s exists but its signer key does not: %w", pub, err)
		}
		return strings.TrimSpace(string(b)), false, nil
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return "", false, err
	}
	if err := hashing.WriteSecretFile(filepath.Join(keysDir, SignerFile), []byte(skey+"\n")); err != nil {
		return "", false, err
	}
	if err := fsutil.WriteFileDurable(pub, []byte(vkey+"\n"), 0o644); err != nil {
		return "", false, err
	}
	return vkey, true, nil
}

// LoadSigner reads the signing key, refusing a file others can read.
func LoadSigner(keysDir string) (note.Signer, error) {
	path := filepath.Join(keysDir, SignerFile)
	b, err := hashing.ReadSecretFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit signing key %q: %w", path, err)
	}
	s, err := note.NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("audit signing key %q: %w", path, err)
	}
	return s, nil
}

// LoadVerifier accepts a verifier key, or a file holding one.
func LoadVerifier(keyOrFile string) (note.Verifier, error) {
	text := keyOrFile
	if b, err := os.ReadFile(keyOrFile); err == nil {
		text = string(b)
	}
	v, err := note.NewVerifier(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("verifier key: %w (want the key printed by `audiencematch keys init`, or a file holding it)", err)
	}
	return v, nil
}

// VerifyError names the first broken thing verification found.
type VerifyError struct{ What string }

func (e *VerifyError) Error() string { return e.What }

func broken(format string, args ...any) error {
	return &VerifyError{What: fmt.Sprintf(format, args...)}
}

// VerifyLog checks the log under dir against its signed checkpoint and,
// when trusted is not nil, against a checkpoint the auditor saved earlier:
// the log must have grown from it without rewriting history; and every
// record must be readable. It returns the log and its verified checkpoint.
func VerifyLog(dir string, verifier note.Verifier, trusted []byte) (*Log, *log.Checkpoint, error) {
	l, cp, err := VerifyTree(dir, verifier, trusted)
	if err != nil {
		return nil, nil, err
	}
	if u := l.Unreadable(); len(u) > 0 {
		return nil, nil, broken("%s: %s; the signed checkpoint covers it as it is (%d unreadable record(s) in all)",
			filepath.Join(dir, RecordsFile), l.records[u[0]].Reason, len(u))
	}
	return l, cp, nil
}

// VerifyTree is VerifyLog for readers that list records: it checks every
// line's bytes against the signed checkpoint (and trusted), but returns the
// log even when some lines are not readable records (Log.Unreadable), so
// that the rest can be shown.
func VerifyTree(dir string, verifier note.Verifier, trusted []byte) (*Log, *log.Checkpoint, error) {
	cpPath := filepath.Join(dir, CheckpointFile)
	cpBytes, err := os.ReadFile(cpPath)
	if err != nil {
		return nil, nil, broken("checkpoint: %v", err)
	}
	cp, err := ParseCheckpoint(cpBytes, verifier)
	if err != nil {
		return nil, nil, broken("checkpoint %s: %v", cpPath, err)
	}
	l, err := Open(dir)
	if err != nil {
		return nil, nil, broken("%v", err)
	}
	if uint64(l.Size()) != cp.Size {
		return nil, nil, broken("%s holds %d records but the signed checkpoint covers %d: records were removed or added without a signature",
			filepath.Join(dir, RecordsFile), l.Size(), cp.Size)
	}
	root, err := l.Root(l.Size())
	if err != nil {
		return nil, nil, err
	}
	if !bytes.Equal(root[:], cp.Hash) {
		return nil, nil, broken("the records' Merkle root %x differs from the signed checkpoint's %x: a record was changed", root[:], cp.Hash)
	}
	if trusted != nil {
		old, err := ParseCheckpoint(trusted, verifier)
		if err != nil {
			return nil, nil, broken("trusted checkpoint: %v", err)
		}
		switch {
		case old.Size > cp.Size:
			return nil, nil, broken("rollback: the log has %d records, but you saved a checkpoint of %d", cp.Size, old.Size)
		case old.Size == cp.Size && !bytes.Equal(old.Hash, cp.Hash):
			return nil, nil, broken("fork: two signed checkpoints of size %d with different roots (%x saved, %x now)", cp.Size, old.Hash, cp.Hash)
		}
		proof, err := l.ProveTree(int64(cp.Size), int64(old.Size))
		if err != nil {
			return nil, nil, err
		}
		var oldHash tlog.Hash
		copy(oldHash[:], old.Hash)
		if err := tlog.CheckTree(proof, int64(cp.Size), root, int64(old.Size), oldHash); err != nil {
			return nil, nil, broken("history rewritten: the log of %d records is not an extension of the saved checkpoint of %d (%v)", cp.Size, old.Size, err)
		}
	}
	return l, cp, nil
}
