package oprfx

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/pipeline"
)

// BenchmarkEvaluateRequest is `oprf evaluate` on a request of
// $AUDIENCEMATCH_OPRF_BENCH_ELEMENTS elements (scripts/bench.sh sets 1Mi;
// default 4096): reading, checking and evaluating every element on every
// core, writing the response, recording it. The request repeats 4096
// distinct blinded numbers, which costs the same to evaluate as distinct
// ones and far less to make.
func BenchmarkEvaluateRequest(b *testing.B) {
	n := 4096
	if s := os.Getenv("AUDIENCEMATCH_OPRF_BENCH_ELEMENTS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n <= 0 {
			b.Fatalf("AUDIENCEMATCH_OPRF_BENCH_ELEMENTS=%q: want a positive count", s)
		}
	}
	dir := b.TempDir()
	distinct := make([]requestRow, min(n, 4096))
	if err := parallel(context.Background(), len(distinct), func(i int) error {
		bl, err := hashing.BlindE164("+1650555" + strconv.Itoa(1000+i))
		distinct[i].Blinded = bl.Blinded
		return err
	}); err != nil {
		b.Fatal(err)
	}
	req := make([]requestRow, n)
	for i := range req {
		req[i] = distinct[i%len(distinct)]
	}
	request := filepath.Join(dir, "request.parquet")
	if err := writeParquet(request, 0o644, req); err != nil {
		b.Fatal(err)
	}
	mk, _ := hashing.NewMasterKey(bytes.Repeat([]byte{1}, 32))
	sk, _ := hashing.DeriveOPRFKey(mk, "meta-ads")
	skey, vkey, _ := note.GenerateKey(nil, audit.DefaultOrigin)
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	budget := int64(n) * int64(b.N+10)
	for b.Loop() {
		state := b.TempDir()
		reg := pipeline.TestRegistry(filepath.Join(state, "out"), "meta-ads", hashing.OPRFRistretto255)
		reg.Destinations[0].OPRFMaxEvaluations = &budget
		_, err := Evaluate(context.Background(), EvaluateConfig{Destination: "meta-ads", Key: sk, Registry: reg, State: state,
			Request: request, Response: filepath.Join(state, "response.parquet"), ToolVersion: "bench", AuditSigner: signer, AuditVerifier: verifier})
		if err != nil {
			b.Fatal(err)
		}
	}
	s := b.Elapsed().Seconds()
	b.ReportMetric(float64(n*b.N)/s, "evals/s")
	b.ReportMetric(float64(n*b.N)/s/float64(runtime.GOMAXPROCS(0)), "evals/s/core")
}
