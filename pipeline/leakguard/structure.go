package leakguard

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/encoding/thrift"
	"github.com/parquet-go/parquet-go/format"

	"audiencematch/hashing"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/source"
)

// The leak guard's checks of what a run writes by construction: the
// manifest and the Parquet files' structures. They compare every string
// with what the run puts there (its configuration, the part writer's
// footer) or with the shape of what it puts there (a digest, a reason's
// name, a part's path), and every bound of the ids with the ids. None is
// compared with the input: a user may type any of these strings as their
// phone, and the run must still publish (the withdrawals with it).

var (
	runIDShape  = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$`) // see pipeline's runID
	digestShape = regexp.MustCompile(`^[0-9a-f]{64}$`)
	keyIDShape  = regexp.MustCompile(`^[0-9a-f]{16}$`)
	partShape   = regexp.MustCompile(`^part-[0-9]{5,}\.parquet$`) // see idfile.PartWriter.open
	// Reasons and classes are open lists: a source or a consent rule may add
	// one, and a name the guard did not know would stop the run the first
	// time a row has it. So a count's key is checked by its shape.
	reasonShape = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// checkManifest checks the manifest field by field, as the run and its
// stages fill it. Its bytes are exactly the JSON of a Manifest (no other
// field, no field twice, no other spelling), the fields the run takes from
// its configuration are e.Manifest's, and every other string has the shape
// of what the run puts there. The counts are the run's; the files' are
// compared with the files by checkListed.
func checkManifest(f guardFile, e *Expect, removesScheme hashing.Scheme) (*manifest.Manifest, error) {
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil, err
	}
	fail := func(what string) (*manifest.Manifest, error) { return nil, &LeakError{f.rel, what} }
	var m manifest.Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if dec.Decode(&m) != nil {
		// The decoder's error may quote an unknown field's name.
		return fail("not the JSON of a manifest (a field it does not have, or of another type)")
	}
	canon, err := json.Marshal(&m)
	if err != nil {
		return nil, err
	}
	var got bytes.Buffer
	if json.Compact(&got, b) != nil || !bytes.Equal(got.Bytes(), canon) {
		return fail("not exactly the JSON of its fields (a field twice, spelled otherwise, or more after it)")
	}
	want := e.Manifest
	// A run's id starts with its cutoff (see run.runID).
	at, err := time.Parse(time.RFC3339Nano, want.AsOf)
	if err != nil {
		return nil, fmt.Errorf("leak guard: the expected manifest's as_of: %w", err)
	}
	asOf := at.UTC().Format("20060102T150405Z") + "-"
	for _, c := range []struct {
		field string
		ok    bool
	}{
		{"version", m.Version == want.Version},
		{"run_id", runIDShape.MatchString(m.RunID) && strings.HasPrefix(m.RunID, asOf)},
		{"tool_version", m.ToolVersion == want.ToolVersion},
		{"destination", m.Destination == want.Destination},
		{"as_of", m.AsOf == want.AsOf},
		{"purpose", m.Purpose == want.Purpose},
		{"policy", m.Policy == want.Policy},
		{"scheme", m.Scheme == want.Scheme},
		{"key_id", m.KeyID == want.KeyID},
		{"config_digest", m.ConfigDigest == want.ConfigDigest},
		{"previous_run_id", m.PreviousRunID == "" || runIDShape.MatchString(m.PreviousRunID)},
		{"adds", m.Adds == nil || m.Adds.Scheme == want.Scheme && m.Adds.KeyID == want.KeyID},
		{"removes", m.Removes == nil || m.Removes.Scheme == string(removesScheme) && slices.Contains(hashing.Schemes(), removesScheme) &&
			(m.Removes.KeyID == "" || keyIDShape.MatchString(m.Removes.KeyID))},
	} {
		if !c.ok {
			return fail(c.field + " is not what the run writes there")
		}
	}
	tables := map[string]bool{}
	for _, in := range m.Inputs {
		switch {
		case in.Table != source.TableUsers && in.Table != source.TableConsent || tables[in.Table]:
			return fail("inputs: a table other than users and consent_events, or one twice")
		case e.InputNames != nil && in.Name != e.InputNames(in.Table):
			return fail("inputs: a name that is not the source's")
		case !digestShape.MatchString(in.SHA256):
			return fail("inputs: a sha256 that is not a SHA-256")
		}
		tables[in.Table] = true
	}
	type listing struct {
		field, dir string
		files      []manifest.OutputFile
	}
	files := []listing{{"files", "", m.Files}}
	if m.Adds != nil {
		files = append(files, listing{"adds", "adds/", m.Adds.Files})
	}
	if m.Removes != nil {
		files = append(files, listing{"removes", "removes/", m.Removes.Files})
	}
	for _, fs := range files {
		for _, o := range fs.files {
			if name, ok := strings.CutPrefix(o.Path, fs.dir); !ok || !partShape.MatchString(name) {
				return fail(fs.field + ": a path that is not a part's")
			}
			if !digestShape.MatchString(o.SHA256) {
				return fail(fs.field + ": a sha256 that is not a SHA-256")
			}
		}
	}
	for _, c := range []struct {
		field  string
		counts map[string]int64
	}{
		{"users.excluded", m.Users.Excluded},
		{"consent_events.by_class", m.ConsentEvents.ByClass},
		{"rejects.users", m.Rejects.Users},
		{"rejects.consent_events", m.Rejects.ConsentEvents},
	} {
		for k := range c.counts {
			if !reasonShape.MatchString(k) {
				return fail(c.field + ": a key that is not a reason's name")
			}
		}
	}
	return &m, nil
}

// checkListed checks that the manifest lists every Parquet file published,
// once, with the ids its data pages hold and its size.
func checkListed(m *manifest.Manifest, files []guardFile) error {
	unlisted := map[string]*guardFile{}
	for i := range files {
		if files[i].kind == guardParquet {
			unlisted[files[i].rel] = &files[i]
		}
	}
	lists := [][]manifest.OutputFile{m.Files}
	if m.Adds != nil {
		lists = append(lists, m.Adds.Files)
	}
	if m.Removes != nil {
		lists = append(lists, m.Removes.Files)
	}
	for _, l := range lists {
		for _, o := range l {
			// o.Path has a part's shape (checkManifest): it may be named.
			f, ok := unlisted[o.Path]
			switch {
			case !ok:
				return &LeakError{"manifest.json", fmt.Sprintf("%s is listed twice, or not published", o.Path)}
			case o.Rows != f.values || o.Bytes != f.size:
				return &LeakError{"manifest.json", fmt.Sprintf("%s: rows or bytes are not the file's", o.Path)}
			}
			delete(unlisted, o.Path)
		}
	}
	if len(unlisted) > 0 {
		return &LeakError{slices.Sorted(maps.Keys(unlisted))[0], "a Parquet file the manifest does not list"}
	}
	return nil
}

// writerFooters are the footers the part writer gives a file without
// rows, by scheme and key_id: every published file's footer but for its
// row groups.
type writerFooters struct {
	layout idfile.Layout
	m      map[[2]string]*format.FileMetaData
}

func (w *writerFooters) get(scheme hashing.Scheme, keyID string) (*format.FileMetaData, error) {
	k := [2]string{string(scheme), keyID}
	if md, ok := w.m[k]; ok {
		return md, nil
	}
	// As idfile.PartWriter.open makes a part.
	var buf bytes.Buffer
	var err error
	if opts := idfile.WriterOptions(w.layout, scheme, keyID); scheme.Binary() && scheme.IDLen() == len(idfile.WideIDRow{}.ID) {
		err = parquet.NewGenericWriter[idfile.WideIDRow](&buf, opts...).Close()
	} else if scheme.Binary() {
		err = parquet.NewGenericWriter[idfile.BinaryIDRow](&buf, opts...).Close()
	} else {
		err = parquet.NewGenericWriter[idfile.TextIDRow](&buf, opts...).Close()
	}
	if err != nil {
		return nil, fmt.Errorf("leak guard: the part writer's footer: %w", err)
	}
	b := buf.Bytes()
	n := int(binary.LittleEndian.Uint32(b[len(b)-8:]))
	md := new(format.FileMetaData)
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), b[len(b)-8-n:len(b)-8], md); err != nil {
		return nil, fmt.Errorf("leak guard: the part writer's footer: %w", err)
	}
	if w.m == nil {
		w.m = map[[2]string]*format.FileMetaData{}
	}
	w.m[k] = md
	return md, nil
}

// parquetLayout checks a Parquet file of ids against what the part writer
// makes, accounting for every byte of it: the magic at both ends, the
// footer and its length, and the column chunks, column indexes and offset
// indexes the row groups point to, end to end. Each structure decodes to
// fields checked here and encodes back to its own bytes, so that nothing
// hides in a field the decoder skips. The data pages' payloads are left to
// checkIDs, which decodes their ids, with the count of ids and the bounds
// gathered here (into gf).
func parquetLayout(f *os.File, gf *guardFile, want *format.FileMetaData) error {
	fail := func(format string, args ...any) error { return &LeakError{gf.rel, fmt.Sprintf(format, args...)} }
	size := gf.size
	var head, tail [8]byte
	if size < 12 {
		return fail("not a readable Parquet file: %d bytes", size)
	}
	if _, err := f.ReadAt(head[:4], 0); err != nil {
		return err
	}
	if _, err := f.ReadAt(tail[:], size-8); err != nil {
		return err
	}
	foot := region{size - 8 - int64(binary.LittleEndian.Uint32(tail[:4])), int64(binary.LittleEndian.Uint32(tail[:4]))}
	if string(head[:4]) != "PAR1" || string(tail[4:]) != "PAR1" || foot.off < 4 {
		return fail("not a readable Parquet file: no magic, or a footer longer than the file")
	}
	fb := make([]byte, foot.n)
	if _, err := f.ReadAt(fb, foot.off); err != nil {
		return err
	}
	var md format.FileMetaData
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), fb, &md); err != nil {
		return fail("not a readable Parquet file: footer: %v", err)
	}
	if len(md.Schema) != 2 || md.Schema[1].Name != "id" || md.Schema[1].NumChildren.Valid || md.Schema[1].RepetitionType.V != format.Required {
		return fail("columns other than the contract's single required id column (%d schema elements)", len(md.Schema))
	}
	if typ := md.Schema[1].Type.V; gf.scheme.Binary() {
		if typ != format.FixedLenByteArray || int(md.Schema[1].TypeLength.V) != gf.scheme.IDLen() {
			return fail("id is not FIXED_LEN_BYTE_ARRAY(%d)", gf.scheme.IDLen())
		}
	} else if typ != format.ByteArray {
		return fail("id is not a string column")
	}
	wantKV := map[string]string{}
	for _, kv := range want.KeyValueMetadata {
		wantKV[kv.Key] = kv.Value
	}
	for _, kv := range md.KeyValueMetadata {
		if v, ok := wantKV[kv.Key]; !ok {
			return fail("unexpected key-value metadata") // whose key may be what leaks
		} else if kv.Value != v {
			return fail("footer at byte %d: key-value metadata %q is not the part writer's", foot.off, kv.Key)
		}
	}
	if len(md.KeyValueMetadata) != len(want.KeyValueMetadata) {
		return fail("footer at byte %d: %d key-value metadata, the part writer writes %d", foot.off, len(md.KeyValueMetadata), len(want.KeyValueMetadata))
	}
	spans := []region{{0, 4}, foot, {size - 8, 8}}
	hdr := make([]byte, 64<<10)
	for g := range md.RowGroups {
		chunk, err := columnChunkLayout(f, gf, &md, g, foot.off, hdr)
		if err != nil {
			return err
		}
		spans = append(spans, chunk...)
	}
	if md.CreatedBy != want.CreatedBy {
		return fail("footer at byte %d: created_by is not the part writer's", foot.off)
	}
	for i := range md.Schema {
		if !sameThrift(&md.Schema[i], &want.Schema[i]) {
			return fail("footer at byte %d: the schema is not the part writer's", foot.off)
		}
	}
	got, tmpl := md, *want
	got.NumRows, got.RowGroups, tmpl.NumRows, tmpl.RowGroups = 0, nil, 0, nil
	if !sameThrift(&got, &tmpl) {
		return fail("footer at byte %d: fields the part writer does not write", foot.off)
	}
	if b, err := thrift.Marshal(new(thrift.CompactProtocol), &md); err != nil || !bytes.Equal(b, fb) {
		return fail("footer at byte %d: bytes that are not its fields'", foot.off)
	}
	slices.SortFunc(spans, func(a, b region) int { return cmp.Compare(a.off, b.off) })
	at := int64(0)
	for _, s := range spans {
		switch {
		case s.off < at:
			return fail("byte %d: column chunks, indexes or footer overlap", s.off)
		case s.off > at:
			return fail("byte %d: %d bytes in no page, index or footer", at, s.off-at)
		}
		at = s.off + s.n
	}
	return nil
}

// columnChunkLayout checks row group g's one column chunk: its metadata,
// its pages end to end, its column index and offset index (ending before
// the footer, at end). It returns the spans they take.
func columnChunkLayout(f *os.File, gf *guardFile, md *format.FileMetaData, g int, end int64, hdr []byte) ([]region, error) {
	fail := func(format string, args ...any) ([]region, error) {
		return nil, &LeakError{gf.rel, fmt.Sprintf("row group %d: "+format, append([]any{g}, args...)...)}
	}
	rg := &md.RowGroups[g]
	if len(rg.Columns) != 1 {
		return fail("%d column chunks", len(rg.Columns))
	}
	cc := &rg.Columns[0]
	cm := &cc.MetaData
	start := cm.DataPageOffset
	if cm.DictionaryPageOffset > 0 {
		start = min(start, cm.DictionaryPageOffset)
	}
	chunk := region{start, cm.TotalCompressedSize}
	if cc.FilePath != "" || start < 4 || chunk.n < 0 || start+chunk.n > end {
		return fail("column chunk outside the file")
	}
	switch {
	case len(cm.PathInSchema) != 1 || cm.PathInSchema[0] != "id" || cm.Type != md.Schema[1].Type.V:
		return fail("a column chunk of another column")
	case len(cm.KeyValueMetadata) != 0:
		return fail("column key-value metadata")
	case cm.BloomFilterOffset != 0 || cm.BloomFilterLength != 0:
		return fail("a bloom filter")
	case cc.CryptoMetadata.Value != nil || len(cc.EncryptedColumnMetadata) != 0:
		return fail("encryption metadata")
	case cm.GeospatialStatistics.BBox != (format.BoundingBox{}) || len(cm.GeospatialStatistics.GeoSpatialTypes) != 0:
		return fail("geospatial statistics")
	}
	gb := groupBounds{chunk: statBounds(&cm.Statistics)}
	var locs []format.PageLocation
	n := int64(0)
	for off := start; off < start+chunk.n; {
		m, err := f.ReadAt(hdr[:min(int64(len(hdr)), start+chunk.n-off)], off)
		if err != nil && err != io.EOF {
			return nil, err
		}
		rd := bytes.NewReader(hdr[:m])
		var h format.PageHeader
		if err := thrift.NewDecoder(new(thrift.CompactProtocol).NewReader(rd)).Decode(&h); err != nil {
			return fail("byte %d: unreadable page header: %v", off, err)
		}
		hl := int64(m - rd.Len())
		if b, err := thrift.Marshal(new(thrift.CompactProtocol), &h); err != nil || !bytes.Equal(b, hdr[:hl]) {
			return fail("byte %d: a page header with bytes that are not its fields'", off)
		}
		p := region{off + hl, int64(h.CompressedPageSize)}
		if p.n < 0 || p.off+p.n > start+chunk.n {
			return fail("byte %d: page runs past its column chunk", off)
		}
		var values int64
		var stats *format.Statistics
		switch v2 := &h.DataPageHeaderV2.V; {
		case h.Type == format.DataPage && h.DataPageHeader.Valid:
			values, stats = int64(h.DataPageHeader.V.NumValues), &h.DataPageHeader.V.Statistics
		case h.Type == format.DataPageV2 && h.DataPageHeaderV2.Valid:
			if v2.DefinitionLevelsByteLength != 0 || v2.RepetitionLevelsByteLength != 0 {
				return fail("byte %d: levels in a page of a required column", off)
			}
			values, stats = int64(v2.NumValues), &v2.Statistics
		default:
			return fail("byte %d: a %s page; ids must be in plain data pages", off, h.Type)
		}
		gb.pages = append(gb.pages, statBounds(stats))
		locs = append(locs, format.PageLocation{Offset: off, CompressedPageSize: int32(hl + p.n), FirstRowIndex: n})
		n += values
		off = p.off + p.n
	}
	if n != cm.NumValues {
		return fail("pages hold %d values, the column chunk says %d", n, cm.NumValues)
	}
	gf.values += n
	spans := []region{chunk}
	if cc.ColumnIndexOffset != 0 || cc.ColumnIndexLength != 0 {
		var ci format.ColumnIndex
		r := region{cc.ColumnIndexOffset, int64(cc.ColumnIndexLength)}
		if err := readIndex(f, r, end, &ci); err != nil {
			return fail("column index: %v", err)
		}
		if len(ci.NullPages) != len(locs) || len(ci.MinValues) != len(locs) || len(ci.MaxValues) != len(locs) || slices.Contains(ci.NullPages, true) {
			return fail("the column index is not one of the chunk's %d pages", len(locs))
		}
		for k := range gb.pages {
			gb.pages[k] = append(gb.pages[k], bound{v: bytes.Clone(ci.MinValues[k]), prefix: true},
				bound{v: bytes.Clone(ci.MaxValues[k]), max: true, prefix: true})
		}
		spans = append(spans, r)
	}
	if cc.OffsetIndexOffset != 0 || cc.OffsetIndexLength != 0 {
		var oi format.OffsetIndex
		r := region{cc.OffsetIndexOffset, int64(cc.OffsetIndexLength)}
		if err := readIndex(f, r, end, &oi); err != nil {
			return fail("offset index: %v", err)
		}
		if !slices.Equal([]format.PageLocation(oi.PageLocations), locs) {
			return fail("the offset index does not locate the chunk's pages")
		}
		spans = append(spans, r)
	}
	gf.groups = append(gf.groups, gb)
	return spans, nil
}

// readIndex decodes the column or offset index at r, which must end by
// end, into v, and checks that it encodes back to its bytes.
func readIndex(f *os.File, r region, end int64, v any) error {
	if r.off < 4 || r.n <= 0 || r.off+r.n > end {
		return fmt.Errorf("outside the file")
	}
	b := make([]byte, r.n)
	if _, err := f.ReadAt(b, r.off); err != nil {
		return err
	}
	if err := thrift.Unmarshal(new(thrift.CompactProtocol), b, v); err != nil {
		return fmt.Errorf("unreadable: %w", err)
	}
	if re, err := thrift.Marshal(new(thrift.CompactProtocol), v); err != nil || !bytes.Equal(re, b) {
		return fmt.Errorf("byte %d: bytes that are not its fields'", r.off)
	}
	return nil
}

// sameThrift reports whether a and b encode to the same bytes.
func sameThrift(a, b any) bool {
	x, err := thrift.Marshal(new(thrift.CompactProtocol), a)
	if err != nil {
		return false
	}
	y, err := thrift.Marshal(new(thrift.CompactProtocol), b)
	return err == nil && bytes.Equal(x, y)
}

// groupBounds are the bounds of a row group's ids its column chunk's
// statistics give, and those each data page's header and column index
// entry give.
type groupBounds struct {
	chunk []bound
	pages [][]bound
}

// bound is a value given as the least id of some (or, with max, the
// greatest). It must be that id; with prefix, it may also be the id as
// Parquet truncates a column index's bounds: the least id's prefix, or the
// greatest id's prefix incremented as an unsigned number.
type bound struct {
	v           []byte
	max, prefix bool
}

// statBounds are the bounds s gives: min and max (deprecated, but what
// parquet-go writes in page headers, ordered as min_value and max_value
// for byte arrays), min_value and max_value, each copied. An empty value
// is no bound, and holds nothing.
func statBounds(s *format.Statistics) []bound {
	var out []bound
	for _, b := range []bound{{v: s.Min}, {v: s.MinValue}, {v: s.Max, max: true}, {v: s.MaxValue, max: true}} {
		if len(b.v) > 0 {
			b.v = bytes.Clone(b.v)
			out = append(out, b)
		}
	}
	return out
}

// of reports whether b is a bound of ids whose least (or greatest) is id.
func (b bound) of(id []byte) bool {
	switch {
	case bytes.Equal(b.v, id):
		return true
	case !b.prefix || len(b.v) >= len(id):
		return false
	case !b.max:
		return bytes.Equal(b.v, id[:len(b.v)])
	}
	return bytes.Equal(b.v, incremented(id[:len(b.v)]))
}

// incremented is p plus one, as an unsigned big-endian number, or all 0xff
// where that overflows: parquet-go's truncation of a greatest value.
func incremented(p []byte) []byte {
	q := bytes.Clone(p)
	for i := len(q) - 1; i >= 0; i-- {
		if q[i]++; q[i] != 0 {
			return q
		}
	}
	for i := range q {
		q[i] = 0xff
	}
	return q
}

// boundsHold reports whether every bound of bs is one of ids whose least
// is lo and greatest hi (nil: no ids).
func boundsHold(bs []bound, lo, hi []byte) bool {
	for _, b := range bs {
		id := lo
		if b.max {
			id = hi
		}
		if id == nil || !b.of(id) {
			return false
		}
	}
	return true
}

// pageError says what is wrong with the bounds of page k of the group,
// whose least and greatest ids are lo and hi, if anything.
func (gb *groupBounds) pageError(k int, lo, hi []byte) string {
	if k >= len(gb.pages) {
		return fmt.Sprintf("%d pages decoded, the column chunk has %d page headers", k+1, len(gb.pages))
	}
	if !boundsHold(gb.pages[k], lo, hi) {
		return "a page's statistics or column index give a bound that is not its least or greatest id"
	}
	return ""
}

// chunkError says what is wrong with the group once its pages are
// decoded, whose least and greatest ids are lo and hi, if anything.
func (gb *groupBounds) chunkError(pages int, lo, hi []byte) string {
	if pages != len(gb.pages) {
		return fmt.Sprintf("%d pages decoded, the column chunk has %d page headers", pages, len(gb.pages))
	}
	if !boundsHold(gb.chunk, lo, hi) {
		return "the column chunk's statistics give a bound that is not its least or greatest id"
	}
	return ""
}
