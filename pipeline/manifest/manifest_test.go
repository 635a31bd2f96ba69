package manifest

import (
	"encoding/json"
	"strings"
	"testing"
)

// balanced is a manifest of a second run whose counts reconcile.
func balanced() *Manifest {
	m := New()
	m.Users.Rows, m.Users.Exported, m.TotalRows = 10, 6, 6
	m.Users.Excluded["withdrawn"], m.Users.Excluded["malformed_row"] = 3, 1
	m.Rejects.Users["broken_csv_quoting"] = 1
	m.ConsentEvents.Rows, m.ConsentEvents.ByClass["used"] = 7, 7
	m.Files = []OutputFile{{Path: "part-00000.parquet", Rows: 6}}
	m.PreviousRunID, m.PreviousTotalRows = "r1", 5
	m.Adds = &DeltaSet{Files: []OutputFile{{Path: "adds/part-00000.parquet", Rows: 2}}, Rows: 2}
	m.Removes = &DeltaSet{Files: []OutputFile{{Path: "removes/part-00000.parquet", Rows: 1}}, Rows: 1}
	return m
}

func TestReconcile(t *testing.T) {
	if err := balanced().Reconcile(); err != nil {
		t.Fatalf("a balanced manifest: %v", err)
	}
	for name, edit := range map[string]func(*Manifest){
		"a user row uncounted":    func(m *Manifest) { m.Users.Rows++ },
		"a file row missing":      func(m *Manifest) { m.Files[0].Rows-- },
		"an event unclassified":   func(m *Manifest) { m.ConsentEvents.Rows++ },
		"a reject not malformed":  func(m *Manifest) { m.Rejects.Users["x"]++ },
		"removes one short":       func(m *Manifest) { m.Removes.Rows--; m.Removes.Files[0].Rows-- },
		"deltas without previous": func(m *Manifest) { m.PreviousRunID = "" },
	} {
		m := balanced()
		edit(m)
		if err := m.Reconcile(); err == nil {
			t.Errorf("%s: reconciled", name)
		}
	}
}

func TestReadManifestVersion(t *testing.T) {
	b, _ := json.Marshal(balanced())
	if _, err := ReadManifest(b); err != nil {
		t.Fatal(err)
	}
	other := strings.Replace(string(b), Version, "audiencematch.manifest/v2", 1)
	if _, err := ReadManifest([]byte(other)); err == nil || !strings.Contains(err.Error(), "v2") {
		t.Errorf("an unknown version: %v", err)
	}
}
