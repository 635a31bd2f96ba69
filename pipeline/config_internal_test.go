package pipeline

import (
	"testing"
	"time"

	"audiencematch/consent"
	"audiencematch/hashing"
	"audiencematch/pipeline/idfile"
)

// TestDigestDefaults: a configuration's digest (and so its shards'
// directory) is the same before and after check fills in the default
// output sizes, and differs when a size is really set otherwise.
func TestDigestDefaults(t *testing.T) {
	c := Config{Destination: "meta-ads", Scheme: hashing.HMACSHA256, Out: "o", State: "s", Users: "u", Consent: "c",
		Rules: consent.Rules{Purpose: "ads_matching", AsOf: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)}, ToolVersion: "t"}
	before := c.Digest()
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	if c.RowsPerFile != idfile.DefaultRowsPerFile || c.RowsPerGroup != idfile.DefaultRowsPerGroup {
		t.Fatalf("check left sizes %d, %d", c.RowsPerFile, c.RowsPerGroup)
	}
	if after := c.Digest(); after != before {
		t.Fatalf("digest %s before check, %s after", before, after)
	}
	c.RowsPerGroup = 1000
	if c.Digest() == before {
		t.Fatal("a different row group size gave the same digest")
	}
}
