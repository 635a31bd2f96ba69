package audit

import (
	"strings"
	"testing"
	"time"
)

func TestOPRFEvaluatedRecord(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	answered := func() *Record {
		return &Record{Version: RecordVersion, Type: TypeOPRFEvaluated, Time: time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC).Format(time.RFC3339Nano),
			ToolVersion: "test", Destination: "meta-ads", Scheme: OPRFScheme, KeyID: "89fa0444ee6d7862",
			Elements: 1000, RequestSHA256: hex64, ResponseSHA256: hex64}
	}
	refused := func() *Record {
		r := answered()
		r.ResponseSHA256, r.Reason = "", "over the budget"
		return r
	}
	for name, r := range map[string]*Record{"answered": answered(), "refused": refused()} {
		line, err := r.Marshal()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		back, err := ParseRecord(line)
		if err != nil || back.Elements != r.Elements || back.RequestSHA256 != hex64 || back.Reason != r.Reason {
			t.Fatalf("%s: read back %+v, %v", name, back, err)
		}
		if !strings.Contains(string(line), `"elements":1000,"request_sha256":"`) {
			t.Errorf("%s: %s", name, line)
		}
	}
	bad := map[string]func(*Record){
		"hmac scheme":           func(r *Record) { r.Scheme = "hmac-sha256" },
		"no key_id":             func(r *Record) { r.KeyID = "" },
		"no request digest":     func(r *Record) { r.RequestSHA256 = "" },
		"no response digest":    func(r *Record) { r.ResponseSHA256 = "" },
		"no elements":           func(r *Record) { r.Elements = 0 },
		"negative":              func(r *Record) { r.Elements = -1 },
		"refused with response": func(r *Record) { r.Reason = "x" },
	}
	for name, f := range bad {
		r := answered()
		f(r)
		if _, err := r.Marshal(); err == nil {
			t.Errorf("%s: an invalid oprf_evaluated record was accepted", name)
		}
	}
}
