package oprfx

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
)

// TestReadElementsShapes: a request's column may be required or optional
// (pyarrow writes optional) but holds no null; any other shape is refused
// as bad data, naming what is expected.
func TestReadElementsShapes(t *testing.T) {
	dir := t.TempDir()
	b, err := hashing.BlindE164("+16505551212")
	if err != nil {
		t.Fatal(err)
	}
	type optional struct {
		Blinded []byte `parquet:"blinded,optional"`
	}
	type wrongName struct {
		Element [32]byte `parquet:"element"`
	}
	type twoColumns struct {
		Blinded [32]byte `parquet:"blinded"`
		Extra   string   `parquet:"extra"`
	}
	write := func(name string, rows any) string {
		p := filepath.Join(dir, name)
		var err error
		switch r := rows.(type) {
		case []requestRow:
			err = parquet.WriteFile(p, r)
		case []optional:
			err = parquet.WriteFile(p, r, parquet.SchemaOf(new(struct {
				Blinded []byte `parquet:"blinded,optional"`
			})))
		case []wrongName:
			err = parquet.WriteFile(p, r)
		case []twoColumns:
			err = parquet.WriteFile(p, r)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// parquet-go writes []byte as BYTE_ARRAY; an optional FLBA(32) column
	// is built from its schema node.
	optPath := filepath.Join(dir, "optional.parquet")
	schema := parquet.NewSchema("r", parquet.Group{"blinded": parquet.Optional(parquet.Leaf(parquet.FixedLenByteArrayType(32)))})
	writeRows := func(p string, vals [][]byte) {
		w := parquet.NewGenericWriter[any](mustCreate(t, p), schema)
		rows := make([]parquet.Row, len(vals))
		for i, v := range vals {
			if v == nil {
				rows[i] = parquet.Row{parquet.NullValue().Level(0, 0, 0)}
			} else {
				rows[i] = parquet.Row{parquet.FixedLenByteArrayValue(v).Level(0, 1, 0)}
			}
		}
		if _, err := w.WriteRows(rows); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	writeRows(optPath, [][]byte{b.Blinded[:], b.Blinded[:]})
	if got, err := readElements(optPath, ColBlinded); err != nil || len(got) != 2 || got[1] != b.Blinded {
		t.Errorf("an optional column without nulls: %d elements, %v", len(got), err)
	}
	nullPath := filepath.Join(dir, "null.parquet")
	writeRows(nullPath, [][]byte{b.Blinded[:], nil})
	if _, err := readElements(nullPath, ColBlinded); !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("a null element: %v, want a data error naming row 2", err)
	}
	if got, err := readElements(write("ok.parquet", []requestRow{{b.Blinded}}), ColBlinded); err != nil || len(got) != 1 {
		t.Errorf("a required column: %v", err)
	}
	for name, p := range map[string]string{
		"wrong name":  write("name.parquet", []wrongName{{b.Blinded}}),
		"two columns": write("two.parquet", []twoColumns{{b.Blinded, "x"}}),
		"bytes":       write("bytes.parquet", []optional{{b.Blinded[:]}}),
	} {
		if _, err := readElements(p, ColBlinded); !errors.Is(err, errkind.ErrData) || !strings.Contains(err.Error(), "FIXED_LEN_BYTE_ARRAY(32)") {
			t.Errorf("%s: %v, want a data error naming the expected column", name, err)
		}
	}
	if _, err := readElements(filepath.Join(dir, "none.parquet"), ColBlinded); !errors.Is(err, errkind.ErrNoInput) {
		t.Errorf("a missing request: %v", err)
	}
}

// TestBlindFinalizeParquetNumbers: a Parquet numbers file without a
// country column; finalize refuses a numbers file other than the one
// blinded, and a response of another length.
func TestBlindFinalizeParquetNumbers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	type number struct {
		Phone string `parquet:"phone"`
		Ref   int64  `parquet:"ref"`
	}
	numbers := filepath.Join(dir, "numbers.parquet")
	if err := parquet.WriteFile(numbers, []number{{"+16505551212", 1}, {"+447400123456", 2}, {"nope", 3}}); err != nil {
		t.Fatal(err)
	}
	req, sec, resp, ids := filepath.Join(dir, "req.parquet"), filepath.Join(dir, "sec.parquet"), filepath.Join(dir, "resp.parquet"), filepath.Join(dir, "ids.parquet")
	br, err := Blind(ctx, "meta-ads", numbers, req, sec)
	if err != nil || br.Blinded != 2 || br.Invalid != 1 {
		t.Fatalf("blind: %+v, %v", br, err)
	}
	sk, _ := hashing.DeriveOPRFKey(hashing.TestKey(t), "meta-ads")
	srv, _ := hashing.NewOPRFServer(sk)
	elems, err := readElements(req, ColBlinded)
	if err != nil {
		t.Fatal(err)
	}
	var rows []responseRow
	for _, e := range elems {
		ev, err := srv.BlindEvaluate([][]byte{e[:]})
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, responseRow{[32]byte(ev[0])})
	}
	if err := writeParquet(resp, 0o644, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := Finalize(ctx, "meta-ads", numbers, sec, resp, ids); err != nil {
		t.Fatal(err)
	}
	cols, got, err := readIDs(ids)
	if err != nil || strings.Join(cols, ",") != "phone,ref" || len(got) != 2 {
		t.Fatalf("ids: %v %d rows, %v", cols, len(got), err)
	}
	want, _ := srv.Evaluate("+447400123456")
	if got[1].cells[1] != "2" || string(got[1].id[:]) != string(want) {
		t.Errorf("row 2: %v, id matches the direct evaluation: %v", got[1].cells, string(got[1].id[:]) == string(want))
	}
	other := filepath.Join(dir, "other.parquet")
	parquet.WriteFile(other, []number{{"+16505551212", 1}})
	if _, err := Finalize(ctx, "meta-ads", other, sec, resp, filepath.Join(dir, "x.parquet")); !errors.Is(err, errkind.ErrUsage) {
		t.Errorf("another numbers file: %v", err)
	}
	if _, err := Finalize(ctx, "other-dest", numbers, sec, resp, filepath.Join(dir, "x.parquet")); !errors.Is(err, errkind.ErrUsage) {
		t.Errorf("another destination: %v", err)
	}
	if err := writeParquet(resp+"1", 0o644, rows[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := Finalize(ctx, "meta-ads", numbers, sec, resp+"1", filepath.Join(dir, "x.parquet")); !errors.Is(err, errkind.ErrData) {
		t.Errorf("a short response: %v", err)
	}
}

func mustCreate(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
