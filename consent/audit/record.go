package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// RecordVersion is the first field of every record this tool writes.
// Readers also accept RecordVersionV1, the records of earlier versions of
// the tool, and refuse any other (docs/AUDITORS.md, "Versions").
const RecordVersion = RecordVersionV2

// The record versions this tool reads. v2 names a run's published
// directory relative to its destination's delivery root (v1: an absolute
// path of the operator's machine), names the registry entry that
// authorized a run (authorization), lists the parts of an input table
// read in parts (inputs' parts), and adds the prune record type.
const (
	RecordVersionV1 = "audiencematch.audit/v1"
	RecordVersionV2 = "audiencematch.audit/v2"
)

// Record types.
const (
	TypeRunCommitted       = "run_committed"
	TypeRunFailed          = "run_failed"
	TypeDestinationRefused = "destination_refused"
	// TypePrune records that published runs of a destination (and their
	// private files) were removed under its retention_days; v2 only. Its
	// pruned_runs lists the run ids whose published directories were
	// removed, and retention_days the policy applied.
	TypePrune = "prune"
	// TypeOPRFEvaluated records one `oprf evaluate` request: answered (no
	// reason, a response digest) or refused (a reason, no response); v2 only.
	TypeOPRFEvaluated = "oprf_evaluated"
)

// OPRFScheme is the only scheme of oprf_evaluated records (MATCHING.md
// section 4, amendment 2).
const OPRFScheme = "oprf-ristretto255"

// TypeUnreadable marks, in Log.Records, a line of the log that is not a
// readable record (see Log.Unreadable). It is never written: Validate
// refuses it like any type v1 does not define.
const TypeUnreadable = "unreadable"

// Record is one event of the audit log. Field order is the canonical order.
type Record struct {
	Version      string `json:"v"`
	Type         string `json:"type"`
	Time         string `json:"time"` // RFC 3339, UTC: when the record was appended
	RunID        string `json:"run_id,omitempty"`
	ToolVersion  string `json:"tool_version"`
	ConfigDigest string `json:"config_digest,omitempty"`
	Destination  string `json:"destination"`
	Scheme       string `json:"scheme,omitempty"`
	KeyID        string `json:"key_id,omitempty"`
	AsOf         string `json:"as_of,omitempty"`
	Purpose      string `json:"purpose,omitempty"`
	// Authorization is the registry entry the run was authorized by (v2):
	// GDPR Art. 30's recipient, provable per run.
	Authorization   *Authorization `json:"authorization,omitempty"`
	Policy          *Policy        `json:"policy,omitempty"`
	Inputs          []Input        `json:"inputs,omitempty"`
	ConsentSnapshot string         `json:"consent_snapshot_sha256,omitempty"`
	Counts          *Counts        `json:"counts,omitempty"`
	// Published is the published run directory: in v2, relative to the
	// destination's delivery root, slash-separated
	// ("<destination>/dt=<date>/run=<run id>"); in v1, an absolute path.
	// See PublishedRel.
	Published     string `json:"published,omitempty"`
	Manifest      *File  `json:"manifest,omitempty"`
	Files         []File `json:"files,omitempty"`
	IDs           *Tree  `json:"ids,omitempty"`      // sorted exported identifiers
	Evidence      *Tree  `json:"evidence,omitempty"` // private evidence rows
	PreviousRunID string `json:"previous_run_id,omitempty"`
	Adds          []File `json:"adds,omitempty"`    // identifiers new since the previous run
	Removes       []File `json:"removes,omitempty"` // identifiers of the previous run no longer eligible
	RemovesScheme string `json:"removes_scheme,omitempty"`
	RemovesKeyID  string `json:"removes_key_id,omitempty"`
	// Backfill marks a run published for a cutoff earlier than the
	// destination's latest committed one: it carries no adds or removes and
	// is outside the delivery chain (previous_run_id never names it).
	Backfill bool `json:"backfill,omitempty"`
	// AllowDrop records that the operator allowed the run to shrink the
	// audience past the drop guard's threshold, or to read empty input.
	AllowDrop bool `json:"allow_drop,omitempty"`
	// Elements, RequestSHA256 and ResponseSHA256 are an oprf_evaluated
	// record's (v2): how many blinded elements the request held, and the
	// SHA-256 of the request and response files.
	Elements       int64  `json:"elements,omitempty"`
	RequestSHA256  string `json:"request_sha256,omitempty"`
	ResponseSHA256 string `json:"response_sha256,omitempty"`
	Reason         string `json:"reason,omitempty"` // why a run failed or was refused
	// PrunedRuns are the runs a prune record removed (v2).
	PrunedRuns []string `json:"pruned_runs,omitempty"`
	// PrunedFailed are the failed runs' directories (STATE/failed/<name>,
	// rejected rows of a run that published nothing) a prune record
	// removed (v2).
	PrunedFailed  []string `json:"pruned_failed,omitempty"`
	RetentionDays int64    `json:"retention_days,omitempty"` // of a prune record
	Extra         []string `json:"extra,omitempty"`          // reserved; must be empty
}

// Authorization is the destination registry entry that authorized a run:
// who received the identifiers, in which relationship, for which purposes,
// on which lawful basis, and the SHA-256 of the registry file as read.
type Authorization struct {
	RegistrySHA256 string   `json:"registry_sha256"`
	Organization   string   `json:"organization"`
	Relationship   string   `json:"relationship"`
	Purposes       []string `json:"purposes"`
	LawfulBasis    string   `json:"lawful_basis"`
	RetentionDays  int64    `json:"retention_days"`
}

// Policy are the consent rules of a run.
type Policy struct {
	MinPolicyVersion     int64   `json:"min_policy_version"`
	MaxConsentAgeSeconds int64   `json:"max_consent_age_seconds"`
	MaxRejectRate        float64 `json:"max_reject_rate"`
}

// Input is one input table.
type Input struct {
	Table  string `json:"table"`
	SHA256 string `json:"sha256"`
	Rows   int64  `json:"rows"`
	// Parts lists the files of a table given as a directory, a glob or an
	// object prefix, in the order read; SHA256 is then the digest of their
	// digests (package source, "Digests"). Absent for a single file.
	Parts []InputPart `json:"parts,omitempty"`
}

// InputPart is one file of an input table given in parts.
type InputPart struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// File is a published file.
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Rows   int64  `json:"rows"`
}

// Counts is the reconciliation of a run.
type Counts struct {
	UserRows  int64            `json:"user_rows"`
	Exported  int64            `json:"exported"`
	Excluded  map[string]int64 `json:"excluded"`
	EventRows int64            `json:"event_rows"`
	Events    map[string]int64 `json:"events"`
}

// Tree names a Merkle tree (RFC 6962) by its size and root.
type Tree struct {
	Size int64  `json:"size"`
	Root string `json:"root"` // hex
}

// Marshal returns the canonical encoding of r, without a newline. It never
// returns a line ParseRecord would refuse: a record the reader cannot parse
// is one the log keeps forever.
func (r *Record) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if _, err := parseRecord(line); err != nil {
		return nil, fmt.Errorf("the record would not read back: %w", err)
	}
	return line, nil
}

// maxReasonBytes bounds a reason (before its ellipsis).
const maxReasonBytes = 1000

// SanitizeReason turns any text, an error message typically, into a reason
// a record can hold: valid UTF-8, on one line, without control characters,
// at most maxReasonBytes (cut at a character boundary, then "…"), never
// empty. Validate refuses invalid UTF-8 because encoding/json writes it as
// \ufffd, which reads back as another string: the record would not be in
// canonical form, and the log would hold a line no reader accepts.
func SanitizeReason(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		// Line and paragraph separators and the C0/C1 controls: a
		// reason is printed on one line of audit runs, and a terminal
		// must not act on what it prints.
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReasonBytes {
		cut := maxReasonBytes
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	if strings.TrimSpace(s) == "" {
		return "(no reason given)"
	}
	return s
}

// ParseRecord parses one canonical record line (without its newline).
func ParseRecord(line []byte) (*Record, error) { return parseRecord(line) }

// parseRecord is ParseRecord, which Marshal also calls on what it wrote.
func parseRecord(line []byte) (*Record, error) {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var r Record
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if dec.More() {
		return nil, errors.New("not a record: data after the JSON object")
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	again, err := json.Marshal(&r)
	if err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if !bytes.Equal(again, line) {
		return nil, errors.New("record is not in canonical form")
	}
	return &r, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && s == lowerHex(s)
}

func lowerHex(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'F' {
			b[i] = c + 32
		}
	}
	return string(b)
}

// Validate checks that a record has what its type requires.
func (r *Record) Validate() error {
	if field := invalidUTF8(reflect.ValueOf(r).Elem(), ""); field != "" {
		return fmt.Errorf("record field %s is not valid UTF-8", field)
	}
	if r.Version != RecordVersionV1 && r.Version != RecordVersionV2 {
		return fmt.Errorf("record version %q: this tool reads %q and %q; a newer version of the tool may read it", r.Version, RecordVersionV1, RecordVersionV2)
	}
	v1 := r.Version == RecordVersionV1
	if v1 && (r.Authorization != nil || r.Type == TypePrune || len(r.PrunedRuns) != 0 || len(r.PrunedFailed) != 0 || r.RetentionDays != 0 ||
		r.Type == TypeOPRFEvaluated || r.Elements != 0 || r.RequestSHA256 != "" || r.ResponseSHA256 != "" ||
		slices.ContainsFunc(r.Inputs, func(in Input) bool { return len(in.Parts) != 0 })) {
		return errors.New("a v1 record has fields or a type of v2")
	}
	if _, err := time.Parse(time.RFC3339Nano, r.Time); err != nil {
		return fmt.Errorf("record time %q: %w", r.Time, err)
	}
	if r.Destination == "" || r.ToolVersion == "" {
		return errors.New("record lacks destination or tool_version")
	}
	if len(r.Extra) != 0 {
		return errors.New("record has extra fields, unknown to this version")
	}
	switch r.Type {
	case TypeRunCommitted:
		switch {
		case r.RunID == "" || r.Scheme == "" || r.AsOf == "" || r.Purpose == "" || r.Published == "":
			return errors.New("run_committed record lacks run_id, scheme, as_of, purpose or published")
		case r.Policy == nil || r.Counts == nil || r.Manifest == nil || r.IDs == nil || r.Evidence == nil:
			return errors.New("run_committed record lacks policy, counts, manifest, ids or evidence")
		case !isHex(r.ConfigDigest, 64) || !isHex(r.ConsentSnapshot, 64) || !isHex(r.Manifest.SHA256, 64):
			return errors.New("run_committed record has a malformed digest")
		case !isHex(r.IDs.Root, 64) || !isHex(r.Evidence.Root, 64) || r.IDs.Size < 0 || r.Evidence.Size < 0:
			return errors.New("run_committed record has a malformed tree")
		case r.KeyID != "" && !isHex(r.KeyID, 16):
			return errors.New("run_committed record has a malformed key_id")
		case r.Backfill && (r.PreviousRunID != "" || len(r.Adds) != 0 || len(r.Removes) != 0):
			return errors.New("run_committed record of a backfill names a previous run or deltas")
		case !v1 && !validRel(r.Published):
			return fmt.Errorf("run_committed record's published %q is not a clean path relative to the delivery root", r.Published)
		case !v1 && r.Authorization == nil:
			return errors.New("run_committed record lacks authorization")
		}
		if a := r.Authorization; a != nil {
			if !isHex(a.RegistrySHA256, 64) || a.Organization == "" || a.Relationship == "" || len(a.Purposes) == 0 || a.LawfulBasis == "" || a.RetentionDays <= 0 {
				return errors.New("run_committed record has an incomplete authorization")
			}
		}
		for _, f := range slices.Concat(r.Files, r.Adds, r.Removes) {
			if !isHex(f.SHA256, 64) || f.Path == "" || f.Rows < 0 {
				return fmt.Errorf("run_committed record has a malformed file entry %q", f.Path)
			}
		}
		for _, in := range r.Inputs {
			if !isHex(in.SHA256, 64) {
				return fmt.Errorf("run_committed record has a malformed input digest for %q", in.Table)
			}
			if err := checkParts(in); err != nil {
				return err
			}
		}
	case TypeRunFailed, TypeDestinationRefused:
		if r.Reason == "" {
			return fmt.Errorf("%s record lacks a reason", r.Type)
		}
	case TypePrune:
		if len(r.PrunedRuns)+len(r.PrunedFailed) == 0 || r.RetentionDays <= 0 {
			return errors.New("prune record lacks pruned_runs (or pruned_failed) or retention_days")
		}
		for _, name := range r.PrunedFailed {
			if !validRel(name) || strings.Contains(name, "/") {
				return fmt.Errorf("prune record names the failed run %q, not a directory name", name)
			}
		}
	case TypeOPRFEvaluated:
		switch {
		case r.Scheme != OPRFScheme || !isHex(r.KeyID, 16) || !isHex(r.RequestSHA256, 64) || r.Elements < 0:
			return errors.New("oprf_evaluated record lacks the oprf-ristretto255 scheme, a key_id, the request's digest or a count")
		case r.Reason == "" && (r.Elements == 0 || !isHex(r.ResponseSHA256, 64)):
			return errors.New("oprf_evaluated record of an answered request lacks its count or the response's digest")
		case r.Reason != "" && r.ResponseSHA256 != "":
			return errors.New("oprf_evaluated record of a refused request names a response")
		}
	default:
		return fmt.Errorf("unknown record type %q", r.Type)
	}
	return nil
}

// checkParts checks the parts of an input table given in parts: each
// named, with a digest, and the table's digest derived from theirs (one
// part: its own; more: the SHA-256 of their hex digests, each followed by
// a line feed, in order; docs/AUDITORS.md, "Derived values").
func checkParts(in Input) error {
	if len(in.Parts) == 0 {
		return nil
	}
	h := sha256.New()
	for _, p := range in.Parts {
		if p.Name == "" || !isHex(p.SHA256, 64) {
			return fmt.Errorf("run_committed record has a malformed part of input %q", in.Table)
		}
		h.Write([]byte(p.SHA256 + "\n"))
	}
	want := hex.EncodeToString(h.Sum(nil))
	if len(in.Parts) == 1 {
		want = in.Parts[0].SHA256
	}
	if in.SHA256 != want {
		return fmt.Errorf("run_committed record's input %q has the digest %s, its parts give %s", in.Table, in.SHA256, want)
	}
	return nil
}

// validRel reports whether p is a clean, slash-separated relative path
// that stays under its root: no leading "/", no "." or ".." element, no
// empty element, no backslash.
func validRel(p string) bool {
	if p == "" || strings.HasPrefix(p, "/") || strings.Contains(p, "\\") {
		return false
	}
	for _, e := range strings.Split(p, "/") {
		if e == "" || e == "." || e == ".." {
			return false
		}
	}
	return true
}

// PublishedRel is the record's published run directory relative to its
// destination's delivery root, slash-separated: as a v2 record stores it;
// for a v1 record, the last three elements of its absolute path
// ("<destination>/dt=<date>/run=<run id>"), which is where every version
// of the tool has published under the root.
func (r *Record) PublishedRel() string {
	if r.Version != RecordVersionV1 {
		return r.Published
	}
	p := filepath.ToSlash(r.Published)
	parts := strings.Split(strings.TrimRight(p, "/"), "/")
	if len(parts) > 3 {
		parts = parts[len(parts)-3:]
	}
	return strings.Join(parts, "/")
}

// invalidUTF8 returns the JSON name of the first string in v (a record or a
// part of one: strings, pointers, slices, structs, maps) that is not valid
// UTF-8, or "" when all are. It walks by reflection so that a field added
// to Record later is checked too.
func invalidUTF8(v reflect.Value, name string) string {
	switch v.Kind() {
	case reflect.String:
		if !utf8.ValidString(v.String()) {
			return name
		}
	case reflect.Pointer:
		if !v.IsNil() {
			return invalidUTF8(v.Elem(), name)
		}
	case reflect.Slice:
		for i := range v.Len() {
			if f := invalidUTF8(v.Index(i), fmt.Sprintf("%s[%d]", name, i)); f != "" {
				return f
			}
		}
	case reflect.Map:
		for it := v.MapRange(); it.Next(); {
			// The key is the text at fault: name the map only.
			if !utf8.ValidString(it.Key().String()) {
				return name + " (a key)"
			}
			if f := invalidUTF8(it.Value(), name+"[]"); f != "" {
				return f
			}
		}
	case reflect.Struct:
		for i := range v.NumField() {
			tag, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
			if name != "" {
				tag = name + "." + tag
			}
			if f := invalidUTF8(v.Field(i), tag); f != "" {
				return f
			}
		}
	}
	return ""
}
