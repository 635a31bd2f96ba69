package consent

import (
	"slices"
	"testing"
)

// TestSharedNumber: MATCHING.md section 3's shared-number rule, with
// amendment 1's unreadable consent blocking like a withdraw, one row per
// situation. reasons are the holders' exclusion reasons, "" for the one the
// number is exported for.
func TestSharedNumber(t *testing.T) {
	var vectors = []struct {
		name    string
		holders []Status
		primary int
		reasons []string
	}{
		{"one valid holder", []Status{Valid}, 0, []string{""}},
		{"two valid", []Status{Valid, Valid}, 0, []string{"", "duplicate_number"}},
		{"valid + withdrawn", []Status{Valid, Withdrawn}, -1, []string{"shared_number_withdrawn", "withdrawn"}},
		{"withdrawn + valid", []Status{Withdrawn, Valid}, -1, []string{"withdrawn", "shared_number_withdrawn"}},
		{"valid + unreadable", []Status{Valid, ConsentUnreadable}, -1, []string{"shared_number_withdrawn", "consent_unreadable"}},
		{"valid + no_consent", []Status{Valid, NoConsent}, 0, []string{"", "no_consent"}},
		{"valid + expired", []Status{Valid, Expired}, 0, []string{"", "expired"}},
		{"valid + stale_policy", []Status{Valid, StalePolicy}, 0, []string{"", "stale_policy"}},
		{"only withdrawn", []Status{Withdrawn}, -1, []string{"withdrawn"}},
		{"only unreadable", []Status{ConsentUnreadable}, -1, []string{"consent_unreadable"}},
		{"no valid holder, none blocking", []Status{NoConsent, Expired}, -1, []string{"no_consent", "expired"}},
		{"three: valid, valid, expired", []Status{Valid, Valid, Expired}, 0, []string{"", "duplicate_number", "expired"}},
		{"three: valid, unreadable, valid", []Status{Valid, ConsentUnreadable, Valid}, -1, []string{"shared_number_withdrawn", "consent_unreadable", "shared_number_withdrawn"}},
		{"three: withdrawn, unreadable, no_consent", []Status{Withdrawn, ConsentUnreadable, NoConsent}, -1, []string{"withdrawn", "consent_unreadable", "no_consent"}},
		{"primary: the first valid in order", []Status{NoConsent, Expired, Valid, Valid}, 2, []string{"no_consent", "expired", "", "duplicate_number"}},
		{"no holders", nil, -1, []string{}},
	}
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			// Holdings left over from another number must not leak through.
			holdings := []Holding{Primary, Primary, Primary, Primary, Primary}
			primary, exported := SharedNumber(v.holders, holdings)
			if primary != v.primary || exported != (v.primary >= 0) {
				t.Errorf("primary, exported: got %v, %v, want %v, %v", primary, exported, v.primary, v.primary >= 0)
			}
			reasons := []string{}
			for i, s := range v.holders {
				reasons = append(reasons, holdings[i].Reason(s))
			}
			if !slices.Equal(reasons, v.reasons) {
				t.Errorf("reasons: got %q, want %q", reasons, v.reasons)
			}
		})
	}
}

// TestSharedNumberAllocs: the pipeline applies the rule to every number of
// a run (10M users), so it must not allocate.
func TestSharedNumberAllocs(t *testing.T) {
	holders := []Status{Valid, NoConsent, Valid}
	holdings := make([]Holding, len(holders))
	if n := testing.AllocsPerRun(100, func() { SharedNumber(holders, holdings) }); n != 0 {
		t.Errorf("allocations per call: got %v, want 0", n)
	}
}

// BenchmarkSharedNumber is the rule on the numbers of BenchmarkResolve's
// shape: most have one valid holder, some two, a few a withdrawn one.
func BenchmarkSharedNumber(b *testing.B) {
	numbers := [][]Status{{Valid}, {Valid}, {Valid}, {Valid}, {Valid, Valid}, {Valid}, {Valid}, {Valid}, {Valid, Withdrawn}, {Valid}}
	holdings := make([]Holding, 2)
	for b.Loop() {
		for _, holders := range numbers {
			SharedNumber(holders, holdings)
		}
	}
	b.ReportMetric(float64(len(numbers))*float64(b.N)/b.Elapsed().Seconds(), "numbers/s")
}
