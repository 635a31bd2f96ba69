package audit

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// RecordVersion is the first field of every record.
const RecordVersion = "audiencematch.audit/v1"

// Record types.
const (
	TypeRunCommitted       = "run_committed"
	TypeRunFailed          = "run_failed"
	TypeDestinationRefused = "destination_refused"
	// TypePrune records what retention removed (package retention).
	TypePrune = "prune"
)

// What a prune removes of a run (Pruned.Removed).
const (
	PrunedPublished = "published" // the run's published directory
	PrunedEvidence  = "evidence"  // STATE/runs/<id>/evidence.parquet
	PrunedRejects   = "rejects"   // STATE/runs/<id>/rejects.csv
	PrunedFailed    = "failed"    // STATE/failed/<id>/, a run that published nothing
)

// TypeUnreadable marks, in Log.Records, a line of the log that is not a
// readable record (see Log.Unreadable). It is never written: Validate
// refuses it like any type v1 does not define.
const TypeUnreadable = "unreadable"

// Record is one event of the audit log. Field order is the canonical order.
type Record struct {
	Version         string  `json:"v"`
	Type            string  `json:"type"`
	Time            string  `json:"time"` // RFC 3339, UTC: when the record was appended
	RunID           string  `json:"run_id,omitempty"`
	ToolVersion     string  `json:"tool_version"`
	ConfigDigest    string  `json:"config_digest,omitempty"`
	Destination     string  `json:"destination"`
	Scheme          string  `json:"scheme,omitempty"`
	KeyID           string  `json:"key_id,omitempty"`
	AsOf            string  `json:"as_of,omitempty"`
	Purpose         string  `json:"purpose,omitempty"`
	Policy          *Policy `json:"policy,omitempty"`
	Inputs          []Input `json:"inputs,omitempty"`
	ConsentSnapshot string  `json:"consent_snapshot_sha256,omitempty"`
	Counts          *Counts `json:"counts,omitempty"`
	Published       string  `json:"published,omitempty"` // the published run directory
	Manifest        *File   `json:"manifest,omitempty"`
	Files           []File  `json:"files,omitempty"`
	IDs             *Tree   `json:"ids,omitempty"`      // sorted exported identifiers
	Evidence        *Tree   `json:"evidence,omitempty"` // private evidence rows
	PreviousRunID   string  `json:"previous_run_id,omitempty"`
	Adds            []File  `json:"adds,omitempty"`    // identifiers new since the previous run
	Removes         []File  `json:"removes,omitempty"` // identifiers of the previous run no longer eligible
	RemovesScheme   string  `json:"removes_scheme,omitempty"`
	RemovesKeyID    string  `json:"removes_key_id,omitempty"`
	// Backfill marks a run published for a cutoff earlier than the
	// destination's latest committed one: it carries no adds or removes and
	// is outside the delivery chain (previous_run_id never names it).
	Backfill bool `json:"backfill,omitempty"`
	// AllowDrop records that the operator allowed the run to shrink the
	// audience past the drop guard's threshold, or to read empty input.
	AllowDrop bool `json:"allow_drop,omitempty"`
	// RetentionDays and Pruned are a prune record's: the registry's
	// retention it enforced, and what it removed of each run.
	RetentionDays int      `json:"retention_days,omitempty"`
	Pruned        []Pruned `json:"pruned,omitempty"`
	Reason        string   `json:"reason,omitempty"` // why a run failed or was refused
	Extra         []string `json:"extra,omitempty"`  // reserved; must be empty in v1
}

// Policy are the consent rules of a run.
type Policy struct {
	MinPolicyVersion     int64   `json:"min_policy_version"`
	MaxConsentAgeSeconds int64   `json:"max_consent_age_seconds"`
	MaxRejectRate        float64 `json:"max_reject_rate"`
}

// Pruned is what a prune removed of one run: of a committed run, some of
// published, evidence and rejects; of a failed run (RunID names
// STATE/failed/<id>), failed.
type Pruned struct {
	RunID   string   `json:"run_id"`
	Removed []string `json:"removed"`
}

// Input is one input table.
type Input struct {
	Table  string `json:"table"`
	SHA256 string `json:"sha256"`
	Rows   int64  `json:"rows"`
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
	if r.Version != RecordVersion {
		return fmt.Errorf("record version %q: this tool reads %q", r.Version, RecordVersion)
	}
	if _, err := time.Parse(time.RFC3339Nano, r.Time); err != nil {
		return fmt.Errorf("record time %q: %w", r.Time, err)
	}
	if r.Destination == "" || r.ToolVersion == "" {
		return errors.New("record lacks destination or tool_version")
	}
	if len(r.Extra) != 0 {
		return errors.New("record has extra fields, unknown to v1")
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
		}
	case TypeRunFailed, TypeDestinationRefused:
		if r.Reason == "" {
			return fmt.Errorf("%s record lacks a reason", r.Type)
		}
	case TypePrune:
		if r.RetentionDays <= 0 || len(r.Pruned) == 0 {
			return errors.New("prune record lacks retention_days or what it pruned")
		}
		for _, p := range r.Pruned {
			if p.RunID == "" || len(p.Removed) == 0 {
				return errors.New("prune record has an entry without run_id or what it removed")
			}
			for _, what := range p.Removed {
				if !slices.Contains([]string{PrunedPublished, PrunedEvidence, PrunedRejects, PrunedFailed}, what) {
					return fmt.Errorf("prune record removed %q, unknown to v1", what)
				}
			}
		}
	default:
		return fmt.Errorf("unknown record type %q", r.Type)
	}
	return nil
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
