package hashing_test

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"audiencematch/hashing"
)

// specPath is the contract, beside the repository (CI checks it out there).
var specPath = filepath.Join("..", "..", "shared", "spec", "MATCHING.md")

// TestSpecVectors reads MATCHING.md's own test vectors, so that the tests
// follow the contract's text rather than a copy of it: every row of the
// "Test vectors" table, and the hmac-sha256 and oprf-ristretto255 known
// answers.
func TestSpecVectors(t *testing.T) {
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatalf("the contract: %v (CI runs with ../shared beside the clone)", err)
	}
	spec := string(b)
	row := regexp.MustCompile("(?m)^\\| `([^`]*)`, (?:`([^`]*)`|empty) \\| `([^`]*)` \\| ([a-z0-9-]+) \\| `([^`]*)`")
	rows := row.FindAllStringSubmatch(spec, -1)
	if len(rows) < 4 {
		t.Fatalf("found %d vector rows in %s, want at least 4", len(rows), specPath)
	}
	for _, r := range rows {
		phone, country, e164, scheme, id := r[1], r[2], r[3], hashing.Scheme(r[4]), r[5]
		got, err := hashing.Normalize(phone, country)
		if err != nil || got != e164 {
			t.Errorf("Normalize(%q, %q) = %q, %v; want %q", phone, country, got, err, e164)
			continue
		}
		h, err := hashing.NewHasher(scheme, hashing.DestKey{})
		if err != nil {
			t.Fatal(err)
		}
		if got := h.ID(e164); got != id {
			t.Errorf("%s(%q) = %q, want %q", scheme, e164, got, id)
		}
	}

	known := func(section, name string) string {
		t.Helper()
		m := regexp.MustCompile(`(?m)^\s+` + name + `\s+= ([0-9a-f]+)\s*$`).FindStringSubmatch(section)
		if m == nil {
			t.Fatalf("no %s in the known answer", name)
		}
		return m[1]
	}
	i := strings.Index(spec, "`hmac-sha256` known answer")
	if i < 0 {
		t.Fatal("no hmac-sha256 known answer in the contract")
	}
	hmacKA := spec[i:]
	master := make([]byte, 32)
	for k := range master {
		master[k] = byte(k)
	}
	mk, err := hashing.NewMasterKey(master)
	if err != nil {
		t.Fatal(err)
	}
	k, err := hashing.DeriveDestKey(mk, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	h, err := hashing.NewHasher(hashing.HMACSHA256, k)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(k[:]), known(hmacKA, "K_dest"); got != want {
		t.Errorf("K_dest = %s, want %s", got, want)
	}
	if got, want := k.KeyID(), known(hmacKA, "key_id"); got != want {
		t.Errorf("key_id = %s, want %s", got, want)
	}
	if got, want := hex.EncodeToString([]byte(h.ID("+16505551212"))), known(hmacKA, "id"); got != want {
		t.Errorf("id = %s, want %s", got, want)
	}

	j := strings.Index(spec, "Keyed oblivious scheme `oprf-ristretto255`")
	if j < 0 || j > i {
		t.Fatal("no oprf-ristretto255 known answer before the hmac-sha256 one in the contract")
	}
	oprfKA := spec[j:i]
	seed, err := hashing.DeriveOPRFSeed(mk, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(seed[:]), known(oprfKA, "seed"); got != want {
		t.Errorf("oprf seed = %s, want %s", got, want)
	}
	sk, err := hashing.DeriveOPRFKey(mk, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := hashing.NewOPRFServer(sk)
	if err != nil {
		t.Fatal(err)
	}
	pk := srv.PublicKey()
	if got, want := hex.EncodeToString(pk[:]), known(oprfKA, "pkS"); got != want {
		t.Errorf("oprf pkS = %s, want %s", got, want)
	}
	if got, want := srv.KeyID(), known(oprfKA, "key_id"); got != want {
		t.Errorf("oprf key_id = %s, want %s", got, want)
	}
	oh, err := hashing.NewHasher(hashing.OPRFRistretto255, sk)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString([]byte(oh.ID("+16505551212"))), known(oprfKA, "id"); got != want {
		t.Errorf("oprf id = %s, want %s", got, want)
	}
}
