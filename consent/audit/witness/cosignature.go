package witness

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// algCosignatureV1 is the signature type byte of a cosignature/v1 key
// (C2SP signed-note, "Signature types").
const algCosignatureV1 = 0x04

// CosignatureVerifier verifies cosignature/v1 signatures of one witness.
type CosignatureVerifier struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

var _ note.Verifier = (*CosignatureVerifier)(nil)

// NewCosignatureVerifier parses a witness's verifier key,
// "<name>+<hash>+<base64(0x04 || key)>".
func NewCosignatureVerifier(vkey string) (*CosignatureVerifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	hexHash, b64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || !validName(name) || len(hexHash) != 8 {
		return nil, errors.New("malformed witness verifier key: want <name>+<8 hex>+<base64>")
	}
	h, err := strconv.ParseUint(hexHash, 16, 32)
	if err != nil {
		return nil, errors.New("malformed witness verifier key hash")
	}
	key, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != algCosignatureV1 {
		return nil, errors.New("witness verifier key is not a cosignature/v1 (0x04) Ed25519 key")
	}
	if keyHash(name, key) != uint32(h) {
		return nil, errors.New("witness verifier key: its hash does not match its name and key")
	}
	return &CosignatureVerifier{name: name, hash: uint32(h), key: ed25519.PublicKey(key[1:])}, nil
}

// Name is the witness's name, as on its cosignature lines.
func (v *CosignatureVerifier) Name() string { return v.name }

// KeyHash is the key hash its cosignatures start with.
func (v *CosignatureVerifier) KeyHash() uint32 { return v.hash }

// String is the verifier key text.
func (v *CosignatureVerifier) String() string {
	return fmt.Sprintf("%s+%08x+%s", v.name, v.hash, base64.StdEncoding.EncodeToString(append([]byte{algCosignatureV1}, v.key...)))
}

// Verify checks sig, the timestamp and signature after the key hash, over
// the checkpoint text msg.
func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize || !checkpointShaped(msg) {
		return false
	}
	t := binary.BigEndian.Uint64(sig)
	return ed25519.Verify(v.key, SignedMessage(t, msg), sig[8:])
}

// Timestamp is the UNIX time a cosignature (its base64, from a note's
// signature line) was made at.
func Timestamp(sigBase64 string) (uint64, error) {
	b, err := base64.StdEncoding.DecodeString(sigBase64)
	if err != nil || len(b) != 4+8+ed25519.SignatureSize {
		return 0, errors.New("malformed cosignature")
	}
	return binary.BigEndian.Uint64(b[4:]), nil
}

// SignedMessage is what a cosignature/v1 signs: the header line, the time
// line, then the checkpoint text.
func SignedMessage(t uint64, checkpoint []byte) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "cosignature/v1\ntime %d\n", t)
	b.Write(checkpoint)
	return b.Bytes()
}

// checkpointShaped reports whether msg is a checkpoint's text: at least
// three lines, each newline-terminated. C2SP tlog-cosignature signs only
// checkpoints.
func checkpointShaped(msg []byte) bool {
	return len(msg) > 0 && msg[len(msg)-1] == '\n' && bytes.Count(msg, []byte("\n")) >= 3
}

func keyHash(name string, key []byte) uint32 {
	h := sha256.New()
	h.Write([]byte(name))
	h.Write([]byte("\n"))
	h.Write(key)
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// validName is C2SP signed-note's rule for key names: non-empty, valid
// UTF-8, no white space and no "+".
func validName(name string) bool {
	return name != "" && utf8.ValidString(name) && strings.IndexFunc(name, unicode.IsSpace) < 0 && !strings.Contains(name, "+")
}
