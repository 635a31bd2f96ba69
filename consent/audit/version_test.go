package audit

import (
	"strings"
	"testing"
)

// committedV2 is a valid run_committed record of version 2.
func committedV2() *Record {
	h := strings.Repeat("ab", 32)
	return &Record{Version: RecordVersionV2, Type: TypeRunCommitted, Time: "2026-11-01T00:00:00Z", RunID: "20261101T000000Z-0123456789ab",
		ToolVersion: "test", ConfigDigest: h, Destination: "meta-ads", Scheme: "hmac-sha256", KeyID: "0123456789abcdef",
		AsOf: "2026-11-01T00:00:00Z", Purpose: "ads_matching",
		Authorization: &Authorization{RegistrySHA256: h, Organization: "Parent Co", Relationship: "parent",
			Purposes: []string{"ads_matching"}, LawfulBasis: "consent", RetentionDays: 90},
		Policy: &Policy{MinPolicyVersion: 1}, ConsentSnapshot: h, Counts: &Counts{Excluded: map[string]int64{}, Events: map[string]int64{}},
		Published: "meta-ads/dt=2026-11-01/run=20261101T000000Z-0123456789ab", Manifest: &File{Path: "manifest.json", SHA256: h},
		IDs: &Tree{Root: h}, Evidence: &Tree{Root: h}}
}

func TestRecordVersions(t *testing.T) {
	if err := committedV2().Validate(); err != nil {
		t.Fatalf("a valid v2 record: %v", err)
	}
	v1 := committedV2()
	v1.Version, v1.Authorization, v1.Published = RecordVersionV1, nil, "/srv/exports/meta-ads/dt=2026-11-01/run=20261101T000000Z-0123456789ab"
	if err := v1.Validate(); err != nil {
		t.Fatalf("a valid v1 record: %v", err)
	}
	if got, want := v1.PublishedRel(), "meta-ads/dt=2026-11-01/run=20261101T000000Z-0123456789ab"; got != want {
		t.Errorf("v1 PublishedRel = %q, want %q", got, want)
	}
	bad := map[string]func(r *Record){
		"absolute published":    func(r *Record) { r.Published = "/srv/exports/meta-ads/dt=2026-11-01/run=x" },
		"published climbs out":  func(r *Record) { r.Published = "meta-ads/../../etc" },
		"published with empty":  func(r *Record) { r.Published = "meta-ads//run=x" },
		"published with dot":    func(r *Record) { r.Published = "./meta-ads" },
		"backslash":             func(r *Record) { r.Published = `meta-ads\run=x` },
		"no authorization":      func(r *Record) { r.Authorization = nil },
		"authorization partial": func(r *Record) { r.Authorization.LawfulBasis = "" },
		"registry digest":       func(r *Record) { r.Authorization.RegistrySHA256 = "xyz" },
		"no retention":          func(r *Record) { r.Authorization.RetentionDays = 0 },
		"v1 with authorization": func(r *Record) { r.Version = RecordVersionV1 },
		"unknown version":       func(r *Record) { r.Version = "audiencematch.audit/v3" },
		"prune in v1": func(r *Record) {
			*r = Record{Version: RecordVersionV1, Type: TypePrune, Time: r.Time, ToolVersion: "t", Destination: "d", PrunedRuns: []string{"x"}, RetentionDays: 3}
		},
		"prune without runs": func(r *Record) {
			*r = Record{Version: RecordVersionV2, Type: TypePrune, Time: r.Time, ToolVersion: "t", Destination: "d", RetentionDays: 3}
		},
	}
	for name, edit := range bad {
		r := committedV2()
		edit(r)
		if err := r.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p := &Record{Version: RecordVersionV2, Type: TypePrune, Time: "2026-11-01T00:00:00Z", ToolVersion: "t", Destination: "d", PrunedRuns: []string{"x"}, RetentionDays: 3}
	line, err := p.Marshal()
	if err != nil {
		t.Fatalf("a prune record: %v", err)
	}
	if want := `{"v":"audiencematch.audit/v2","type":"prune","time":"2026-11-01T00:00:00Z","tool_version":"t","destination":"d","pruned_runs":["x"],"retention_days":3}`; string(line) != want {
		t.Errorf("prune record\n got %s\nwant %s", line, want)
	}
}
