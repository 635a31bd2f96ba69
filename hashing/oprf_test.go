package hashing

import (
	"bytes"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/circl/oprf"
)

// oprfKnownAnswer is MATCHING.md's oprf-ristretto255 known answer (amendment 2).
var oprfKnownAnswer = struct{ seed, pkS, keyID, id string }{
	seed:  "6f8cee38fe740676fddd414f0fbcb351d49ab00bc90d31f13866f38674144cb8",
	pkS:   "0c8e41d61142f911a044d80d2f6c80e3c039d2f160690d1ff5a40c0bb58bf501",
	keyID: "89fa0444ee6d7862",
	id:    "8dc6681dcab189d1349d1870e600201312d3ffaf1fb3008ec31fb9231c775ee3cf04d3eb4c990cbc1c936c9654c77afe1ef37bb39105780a87f2b3ee19e51472",
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOPRFKnownAnswer(t *testing.T) {
	seed, err := DeriveOPRFSeed(TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(seed[:]), oprfKnownAnswer.seed; got != want {
		t.Errorf("seed = %q, want %q", got, want)
	}
	sk, err := DeriveOPRFKey(TestKey(t), "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewOPRFServer(sk)
	if err != nil {
		t.Fatal(err)
	}
	pk := srv.PublicKey()
	if got, want := hex.EncodeToString(pk[:]), oprfKnownAnswer.pkS; got != want {
		t.Errorf("pkS = %q, want %q", got, want)
	}
	if got, want := srv.KeyID(), oprfKnownAnswer.keyID; got != want {
		t.Errorf("key_id = %q, want %q", got, want)
	}
	if got, want := OPRFRistretto255.KeyID(sk), oprfKnownAnswer.keyID; got != want {
		t.Errorf("Scheme.KeyID = %q, want %q", got, want)
	}
	h, err := NewHasher(OPRFRistretto255, sk)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if got := hex.EncodeToString(h.AppendID(nil, "+16505551212")); got != oprfKnownAnswer.id {
			t.Errorf("id #%d = %q, want %q", i, got, oprfKnownAnswer.id)
		}
	}
	// The destination's side reaches the same identifier without the key.
	b, err := BlindE164("+16505551212")
	if err != nil {
		t.Fatal(err)
	}
	ev, err := srv.BlindEvaluate([][]byte{b.Blinded[:]})
	if err != nil {
		t.Fatal(err)
	}
	got, err := FinalizeE164("+16505551212", b.Blind, ev[0])
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != oprfKnownAnswer.id {
		t.Errorf("Blind/BlindEvaluate/Finalize = %x, want %s", got, oprfKnownAnswer.id)
	}
	other, _ := DeriveOPRFKey(TestKey(t), "other-dest")
	if other == sk {
		t.Error("two destinations derived the same oprf key")
	}
	if hk, _ := DeriveDestKey(TestKey(t), "meta-ads"); hk == sk {
		t.Error("the oprf key equals K_dest")
	}
}

// rfc9497Vectors are RFC 9497 appendix A.1.1 (ristretto255-SHA512, mode
// OPRF): seed a3…a3, info "test key".
var rfc9497Vectors = []struct{ input, blind, blinded, evaluated, output string }{
	{"00", "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
		"609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
		"7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
		"527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6"},
	{"5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a", "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
		"da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
		"b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
		"f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73"},
}

func TestOPRFRFC9497Vectors(t *testing.T) {
	seed, info := bytes.Repeat([]byte{0xa3}, 32), []byte("test key")
	sk, err := oprf.DeriveKey(oprf.SuiteRistretto255, oprf.BaseMode, seed, info)
	if err != nil {
		t.Fatal(err)
	}
	skb, _ := sk.MarshalBinary()
	if got, want := hex.EncodeToString(skb), "5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e"; got != want {
		t.Fatalf("skSm = %q, want %q", got, want)
	}
	var dk DestKey
	copy(dk[:], skb)
	srv, err := NewOPRFServer(dk)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range rfc9497Vectors {
		in := string(mustHex(t, v.input))
		r := oprfSuite.Group().NewScalar()
		if err := r.UnmarshalBinary(mustHex(t, v.blind)); err != nil {
			t.Fatal(err)
		}
		b, err := blindWith(in, r)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(b.Blinded[:]); got != v.blinded {
			t.Errorf("BlindedElement(%s) = %q, want %q", v.input, got, v.blinded)
		}
		ev, err := srv.BlindEvaluate([][]byte{b.Blinded[:]})
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(ev[0]); got != v.evaluated {
			t.Errorf("EvaluationElement(%s) = %q, want %q", v.input, got, v.evaluated)
		}
		out, err := FinalizeE164(in, b.Blind, ev[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(out); got != v.output {
			t.Errorf("Output(%s) = %q, want %q", v.input, got, v.output)
		}
		full, err := srv.Evaluate(in)
		if err != nil || hex.EncodeToString(full) != v.output {
			t.Errorf("Evaluate(%s) = %x, %v; want %q", v.input, full, err, v.output)
		}
	}
}

func TestOPRFRefusesBadElements(t *testing.T) {
	sk, _ := DeriveOPRFKey(TestKey(t), "meta-ads")
	srv, _ := NewOPRFServer(sk)
	good, _ := BlindE164("+16505551212")
	nonCanonical := bytes.Repeat([]byte{0xff}, 32) // above the field's modulus
	for name, el := range map[string][]byte{
		"identity":      make([]byte, 32),
		"non-canonical": nonCanonical,
		"short":         good.Blinded[:31],
		"negative":      append([]byte{1}, good.Blinded[1:]...), // odd first byte: a negative field element
	} {
		_, err := srv.BlindEvaluate([][]byte{good.Blinded[:], el})
		var ee *ElementError
		if !errors.As(err, &ee) || ee.Index != 1 || !errors.Is(err, ErrElement) {
			t.Errorf("%s: BlindEvaluate error = %v, want an ElementError at 1 wrapping ErrElement", name, err)
		}
		if _, err := FinalizeE164("+16505551212", good.Blind, el); !errors.Is(err, ErrElement) {
			t.Errorf("%s: FinalizeE164 error = %v, want ErrElement", name, err)
		}
	}
}

func TestOPRFDestinationKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "meta-ads.oprf.key")
	written, err := WriteSchemeKey(path, TestKey(t), OPRFRistretto255, "meta-ads")
	if err != nil {
		t.Fatal(err)
	}
	k, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := DeriveOPRFKey(TestKey(t), "meta-ads")
	if got, err := k.ForScheme(OPRFRistretto255, "meta-ads"); err != nil || got != want || written != want {
		t.Errorf("ForScheme = %v, %v; want the derived skS", got, err)
	}
	if _, err := k.For("meta-ads"); !errors.Is(err, ErrKeyFormat) {
		t.Errorf("an oprf key used as K_dest: err = %v, want ErrKeyFormat", err)
	}
	if _, err := k.ForScheme(OPRFRistretto255, "other"); !errors.Is(err, ErrKeyDestination) {
		t.Errorf("another destination: err = %v", err)
	}
	hpath := filepath.Join(dir, "meta-ads.key")
	if _, err := WriteDestKey(hpath, TestKey(t), "meta-ads"); err != nil {
		t.Fatal(err)
	}
	hk, _ := LoadKey(hpath)
	if _, err := hk.ForScheme(OPRFRistretto255, "meta-ads"); !errors.Is(err, ErrKeyFormat) || !strings.Contains(err.Error(), "keys derive --scheme") {
		t.Errorf("an hmac key used for oprf: err = %v", err)
	}
	if got, _ := MasterKeyOf(TestKey(t)).ForScheme(OPRFRistretto255, "meta-ads"); got != want {
		t.Error("a master key's ForScheme differs from DeriveOPRFKey")
	}
	if s := k.String(); strings.Contains(s, hex.EncodeToString(want[:4])) {
		t.Errorf("String() = %q leaks the key", s)
	}
}

func BenchmarkOPRFEvaluate(b *testing.B) {
	sk, _ := DeriveOPRFKey(TestKey(b), "meta-ads")
	h, _ := NewHasher(OPRFRistretto255, sk)
	buf := make([]byte, 0, 64)
	for b.Loop() {
		buf = h.AppendID(buf[:0], "+16505551212")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "evals/s")
}

func BenchmarkOPRFBlindEvaluate(b *testing.B) {
	sk, _ := DeriveOPRFKey(TestKey(b), "meta-ads")
	srv, _ := NewOPRFServer(sk)
	bl, _ := BlindE164("+16505551212")
	req := [][]byte{bl.Blinded[:]}
	for b.Loop() {
		if _, err := srv.BlindEvaluate(req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "evals/s")
}

// FuzzDecodeElement: any 32 bytes either decode to an element that encodes
// back to exactly them (canonical) and is not the identity, or are refused
// with ErrElement; nothing panics.
func FuzzDecodeElement(f *testing.F) {
	good, _ := BlindE164("+16505551212")
	f.Add(good.Blinded[:])
	f.Add(make([]byte, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 32))
	f.Add([]byte{1})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeElement(b)
		if err != nil {
			if !errors.Is(err, ErrElement) {
				t.Fatalf("error %v does not wrap ErrElement", err)
			}
			return
		}
		enc, err := e.MarshalBinaryCompress()
		if err != nil || !bytes.Equal(enc, b) || e.IsIdentity() {
			t.Fatalf("%x decoded to %x (identity %v, %v)", b, enc, e.IsIdentity(), err)
		}
	})
}
