package suggest

import "testing"

var vectors = []struct {
	word  string
	cands []string
	want  string
}{
	{"allow_unkeyd", []string{"allow_unkeyed", "scheme"}, "allow_unkeyed"},
	{"max-consent-ag", []string{"max-consent-age", "max-reject-rate"}, "max-consent-age"},
	{"min-polciy-version", []string{"min-policy-version"}, "min-policy-version"},
	{"dest", []string{"destination", "destinations"}, "destination"},
	{"xyz", []string{"destination", "state"}, ""},
	{"STATE", []string{"state"}, "state"},
	{"", []string{"a"}, ""},
}

func TestClosest(t *testing.T) {
	for _, v := range vectors {
		if got := Closest(v.word, v.cands); got != v.want {
			t.Errorf("Closest(%q, %q) = %q, want %q", v.word, v.cands, got, v.want)
		}
	}
	if got := Hint("stat", []string{"state"}); got != " (did you mean state?)" {
		t.Errorf("Hint = %q", got)
	}
	if got := Hint("zzzzzz", []string{"state"}); got != "" {
		t.Errorf("Hint = %q, want none", got)
	}
}
