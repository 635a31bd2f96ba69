package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"audiencematch/internal/fsutil"
	"audiencematch/pipeline"
)

// writeMetrics writes a Prometheus text-format file for node_exporter's
// textfile collector, atomically (temp file, rename), so the collector never
// reads half a file. A failed run keeps the last success time of the file it
// replaces.
func writeMetrics(path, destination string, res *pipeline.Result, code int, started, now time.Time) error {
	lastSuccess := previousGauge(path, "audiencematch_last_success_timestamp_seconds", destination)
	if code == exitOK {
		lastSuccess = float64(now.Unix())
	}
	var b bytes.Buffer
	d := fmt.Sprintf("destination=%q", destination)
	gauge := func(name, help string, samples ...string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		for _, s := range samples {
			fmt.Fprintf(&b, "%s%s\n", name, s)
		}
	}
	one := func(v float64, labels ...string) string {
		return "{" + strings.Join(append([]string{d}, labels...), ",") + "} " + strconv.FormatFloat(v, 'g', -1, 64)
	}
	success := 0.0
	if code == exitOK {
		success = 1
	}
	gauge("audiencematch_last_run_timestamp_seconds", "When the last run ended.", one(float64(now.Unix())))
	gauge("audiencematch_last_run_success", "1 if the last run succeeded (or was already done), 0 if it failed.", one(success))
	gauge("audiencematch_last_run_exit_code", "Exit code of the last run.", one(float64(code)))
	gauge("audiencematch_last_success_timestamp_seconds", "When a run last succeeded.", one(lastSuccess))
	gauge("audiencematch_run_duration_seconds", "Wall time of the last run.", one(now.Sub(started).Seconds()))
	if res != nil && res.Manifest != nil {
		m := res.Manifest
		gauge("audiencematch_rows_read", "Rows read by the last run, by table.",
			one(float64(m.Users.Rows), `table="users"`), one(float64(m.ConsentEvents.Rows), `table="consent_events"`))
		gauge("audiencematch_rows_exported", "Identifiers the last run published.", one(float64(m.TotalRows)))
		gauge("audiencematch_rows_excluded", "User rows the last run excluded, by reason.", labelled(one, "reason", m.Users.Excluded)...)
		gauge("audiencematch_consent_events", "Consent events of the last run, by class.", labelled(one, "class", m.ConsentEvents.ByClass)...)
		var stages []string
		for _, s := range res.Stages {
			stages = append(stages, one(s.Duration.Seconds(), fmt.Sprintf("stage=%q", s.Name)))
		}
		gauge("audiencematch_stage_duration_seconds", "Wall time of each stage of the last run.", stages...)
		if m.Adds != nil {
			gauge("audiencematch_delta_rows", "Adds and removes of the last run.",
				one(float64(m.Adds.Rows), `set="adds"`), one(float64(m.Removes.Rows), `set="removes"`))
		}
	}
	return fsutil.WriteFileDurable(path, b.Bytes(), 0o644)
}

func labelled(one func(float64, ...string) string, label string, m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = one(float64(m[k]), fmt.Sprintf("%s=%q", label, k))
	}
	return out
}

// previousGauge reads one sample of an earlier metrics file; 0 if none.
func previousGauge(path, name, destination string) float64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	prefix := fmt.Sprintf("%s{destination=%q} ", name, destination)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			if x, err := strconv.ParseFloat(v, 64); err == nil {
				return x
			}
		}
	}
	return 0
}
