package hashing

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"unicode"

	"golang.org/x/crypto/hkdf"
)

// MinKeyBytes is the shortest master key accepted (MATCHING.md section 4).
const MinKeyBytes = 32

// KeyEnv names the environment variable that may hold the master key as hex
// text, for deployments that mount secrets as environment variables.
const KeyEnv = "AUDIENCEMATCH_MASTER_KEY"

// hkdfInfoPrefix is the HKDF info prefix of contract v1.
const hkdfInfoPrefix = "audiencematch/v1/"

// MasterKey is the secret from which every destination key is derived.
// Its String method never prints the key.
type MasterKey struct{ b []byte }

// String redacts the key so that it cannot reach a log by accident.
func (MasterKey) String() string { return "MasterKey(redacted)" }

// GoString redacts the key for %#v too.
func (MasterKey) GoString() string { return "MasterKey(redacted)" }

// Len is the key's length in bytes.
func (k MasterKey) Len() int { return len(k.b) }

// DestKey is K_dest, the 32-byte key of one destination.
type DestKey [32]byte

// String redacts the key.
func (DestKey) String() string { return "DestKey(redacted)" }

// GoString redacts the key for %#v too.
func (DestKey) GoString() string { return "DestKey(redacted)" }

// Errors returned by the key loaders; callers match them with errors.Is.
var (
	ErrKeyPermissions = errors.New("key file is accessible by group or others")
	ErrKeyShort       = errors.New("master key is shorter than 32 bytes")
	ErrKeyFormat      = errors.New("malformed key")
	ErrNoKey          = errors.New("no master key given")
)

// ParseMasterKey decodes hex text (surrounding white space ignored).
func ParseMasterKey(text []byte) (MasterKey, error) {
	s := strings.TrimSpace(string(text))
	b, err := hex.DecodeString(s)
	if err != nil {
		return MasterKey{}, fmt.Errorf("%w: a master key is hex text: %v", ErrKeyFormat, err)
	}
	if len(b) < MinKeyBytes {
		return MasterKey{}, fmt.Errorf("%w: it has %d bytes; generate one with `audiencematch keys init` or `openssl rand -hex 32`", ErrKeyShort, len(b))
	}
	return MasterKey{b: b}, nil
}

// NewMasterKey wraps raw key bytes (at least 32). It copies b.
func NewMasterKey(b []byte) (MasterKey, error) {
	if len(b) < MinKeyBytes {
		return MasterKey{}, fmt.Errorf("%w: it has %d bytes", ErrKeyShort, len(b))
	}
	return MasterKey{b: append([]byte(nil), b...)}, nil
}

// LoadMasterKey reads the key from path, refusing, as ssh does, a file that
// group or others may read or write. With an empty path it reads the
// environment variable KeyEnv.
func LoadMasterKey(path string) (MasterKey, error) {
	if path == "" {
		v, ok := os.LookupEnv(KeyEnv)
		if !ok {
			return MasterKey{}, fmt.Errorf("%w: pass --key FILE, or set $%s (or a destination key from `audiencematch keys derive` in $%s)", ErrNoKey, KeyEnv, DestKeyEnv)
		}
		k, err := ParseMasterKey([]byte(v))
		if err != nil {
			return MasterKey{}, fmt.Errorf("key from $%s: %w", KeyEnv, err)
		}
		return k, nil
	}
	k, err := loadKeyFile(path)
	if err != nil {
		return MasterKey{}, err
	}
	if _, ok := k.Master(); !ok {
		return MasterKey{}, fmt.Errorf("load key %q: %w: it is the destination key of %q, not a master key", path, ErrKeyFormat, k.destination)
	}
	return k.master, nil
}

// ReadSecretFile reads a small secret file, refusing, as ssh does, one that
// group or others may read or write, or that is not a regular file.
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%w (mode %04o); fix with: chmod 600 %s", ErrKeyPermissions, perm, path)
	}
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

// WriteSecretFile writes a new owner-only file; it never overwrites one.
func WriteSecretFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write %q: file exists; refusing to overwrite a key", path)
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteMasterKey writes key as hex text to a new file of mode 0600. It
// refuses to overwrite an existing file.
func WriteMasterKey(path string, key MasterKey) error {
	if err := WriteSecretFile(path, []byte(hex.EncodeToString(key.b)+"\n")); err != nil {
		return fmt.Errorf("write key %q: %w", path, err)
	}
	return nil
}

// DeriveDestKey computes K_dest = HKDF-SHA256(master, salt="", info="audiencematch/v1/"+dest, 32).
func DeriveDestKey(master MasterKey, destination string) (DestKey, error) {
	k, err := derive32(master, hkdfInfoPrefix+destination)
	return DestKey(k), err
}

// derive32 is HKDF-SHA256(IKM = master, salt = empty, info, L = 32), the
// derivation of every per-destination secret (MATCHING.md section 4).
func derive32(master MasterKey, info string) ([32]byte, error) {
	var k [32]byte
	if len(master.b) < MinKeyBytes {
		return k, ErrKeyShort
	}
	if _, err := io.ReadFull(hkdf.New(sha256.New, master.b, nil, []byte(info)), k[:]); err != nil {
		return k, fmt.Errorf("derive %q: %w", info, err)
	}
	return k, nil
}

// KeyID is the first 16 hex digits of SHA-256(K_dest): it names a key without
// revealing it.
func (k DestKey) KeyID() string {
	sum := sha256.Sum256(k[:])
	return hex.EncodeToString(sum[:8])
}

// GenerateMasterKey returns a fresh random 32-byte master key.
func GenerateMasterKey() (MasterKey, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return MasterKey{}, err
	}
	return MasterKey{b: b}, nil
}

// destKeyTag starts a destination key file (WriteDestKey): the tag, the
// destination, then K_dest as hex, on one line. oprfKeyTag starts one of
// oprf-ristretto255 (WriteOPRFKey), whose key is skS as a serialized scalar.
const (
	destKeyTag = "audiencematch-dest-key/v1"
	oprfKeyTag = "audiencematch-oprf-key/v1"
)

// ErrKeyDestination is returned when a destination key is used for another
// destination.
var ErrKeyDestination = errors.New("key is for another destination")

// Key is what a run is given: the master key, from which every
// destination's key is derived, or one destination's key alone (made by
// `audiencematch keys derive`), which a machine that exports to that
// destination only can hold instead of the master key.
type Key struct {
	master      MasterKey
	dest        DestKey
	destination string // set for a destination key
	oprf        bool   // a destination key of oprf-ristretto255 (skS), not K_dest
}

// String redacts the key.
func (k Key) String() string {
	if k.destination != "" {
		return "Key(destination " + k.destination + ", redacted)"
	}
	return "Key(master, redacted)"
}

// GoString redacts the key for %#v too.
func (k Key) GoString() string { return k.String() }

// MasterKeyOf wraps a master key.
func MasterKeyOf(m MasterKey) Key { return Key{master: m} }

// Master is the master key, and false for a destination key.
func (k Key) Master() (MasterKey, bool) { return k.master, k.destination == "" }

// Destination is the destination of a destination key, "" for a master key.
func (k Key) Destination() string { return k.destination }

// For is K_dest for destination: derived from a master key, or a
// destination key's own when it was made for destination
// (ErrKeyDestination otherwise).
func (k Key) For(destination string) (DestKey, error) {
	if k.destination == "" {
		return DeriveDestKey(k.master, destination)
	}
	if k.destination != destination {
		return DestKey{}, fmt.Errorf("%w: this key is the destination key of %q only, not of %q", ErrKeyDestination, k.destination, destination)
	}
	if k.oprf {
		return DestKey{}, fmt.Errorf("%w: this is the %s key of %q, not its %s key", ErrKeyFormat, OPRFRistretto255, destination, HMACSHA256)
	}
	return k.dest, nil
}

// ForScheme is the key a keyed scheme uses for destination: K_dest for
// hmac-sha256 (For), skS for oprf-ristretto255 (DeriveOPRFKey, or an oprf
// destination key's own when it was made for destination).
func (k Key) ForScheme(scheme Scheme, destination string) (DestKey, error) {
	if scheme != OPRFRistretto255 {
		return k.For(destination)
	}
	if k.destination == "" {
		return DeriveOPRFKey(k.master, destination)
	}
	if k.destination != destination {
		return DestKey{}, fmt.Errorf("%w: this key is the destination key of %q only, not of %q", ErrKeyDestination, k.destination, destination)
	}
	if !k.oprf {
		return DestKey{}, fmt.Errorf("%w: this is the %s key of %q; derive its %s key with `audiencematch keys derive --scheme %s`", ErrKeyFormat, HMACSHA256, destination, OPRFRistretto255, OPRFRistretto255)
	}
	return k.dest, nil
}

// ParseKey decodes a destination key file's text, or else a master key's
// hex text (surrounding white space ignored).
func ParseKey(text []byte) (Key, error) {
	s := strings.TrimSpace(string(text))
	rest, ok := strings.CutPrefix(s, destKeyTag)
	isOPRF := false
	if !ok {
		if rest, isOPRF = strings.CutPrefix(s, oprfKeyTag); !isOPRF {
			m, err := ParseMasterKey(text)
			return Key{master: m}, err
		}
	}
	var b []byte
	f := strings.Fields(rest)
	if len(f) == 2 {
		if d, err := hex.DecodeString(f[1]); err == nil { // on an error, d holds what came before it
			b = d
		}
	}
	if len(b) != len(DestKey{}) {
		return Key{}, fmt.Errorf("%w: a destination key is %q or %q, a destination and 64 hex digits on one line", ErrKeyFormat, destKeyTag, oprfKeyTag)
	}
	k := Key{destination: f[0], oprf: isOPRF}
	copy(k.dest[:], b)
	if isOPRF {
		if _, err := NewOPRFServer(k.dest); err != nil {
			return Key{}, fmt.Errorf("%w: %w", ErrKeyFormat, err)
		}
	}
	return k, nil
}

// DestKeyEnv names the environment variable that may hold a destination
// key file's text (keys derive) instead of KeyEnv's master key.
const DestKeyEnv = "AUDIENCEMATCH_DEST_KEY"

// LoadKey reads a master key or a destination key from path, refusing, as
// ssh does, a file that group or others may read or write. With an empty
// path it reads the environment: a destination key from DestKeyEnv, else
// the master key from KeyEnv (both set is an error).
func LoadKey(path string) (Key, error) {
	if path == "" {
		v, ok := os.LookupEnv(DestKeyEnv)
		if !ok {
			m, err := LoadMasterKey("")
			return Key{master: m}, err
		}
		if _, both := os.LookupEnv(KeyEnv); both {
			return Key{}, fmt.Errorf("%w: both $%s and $%s are set: set one", ErrKeyFormat, DestKeyEnv, KeyEnv)
		}
		k, err := ParseKey([]byte(v))
		if err == nil && k.destination == "" {
			err = fmt.Errorf("%w: it holds a master key; give that in $%s", ErrKeyFormat, KeyEnv)
		}
		if err != nil {
			return Key{}, fmt.Errorf("key from $%s: %w", DestKeyEnv, err)
		}
		return k, nil
	}
	return loadKeyFile(path)
}

// loadKeyFile reads and parses a key file (ReadSecretFile, ParseKey).
func loadKeyFile(path string) (Key, error) {
	text, err := ReadSecretFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("load key %q: %w", path, err)
	}
	k, err := ParseKey(text)
	if err != nil {
		return Key{}, fmt.Errorf("load key %q: %w", path, err)
	}
	return k, nil
}

// WriteDestKey writes destination's key, derived from master, to a new
// file of mode 0600, as LoadKey reads it. It refuses to overwrite a file.
func WriteDestKey(path string, master MasterKey, destination string) (DestKey, error) {
	return WriteSchemeKey(path, master, HMACSHA256, destination)
}

// WriteSchemeKey writes destination's key of a keyed scheme (ForScheme),
// derived from master, to a new file of mode 0600, as LoadKey reads it. It
// refuses to overwrite a file.
func WriteSchemeKey(path string, master MasterKey, scheme Scheme, destination string) (DestKey, error) {
	if destination == "" || strings.ContainsFunc(destination, unicode.IsSpace) {
		return DestKey{}, fmt.Errorf("destination %q: empty or has white space", destination)
	}
	if !scheme.Keyed() {
		return DestKey{}, fmt.Errorf("scheme %s has no key", scheme)
	}
	k, err := MasterKeyOf(master).ForScheme(scheme, destination)
	if err != nil {
		return k, err
	}
	tag := destKeyTag
	if scheme == OPRFRistretto255 {
		tag = oprfKeyTag
	}
	line := tag + " " + destination + " " + hex.EncodeToString(k[:]) + "\n"
	if err := WriteSecretFile(path, []byte(line)); err != nil {
		return k, fmt.Errorf("write key %q: %w", path, err)
	}
	return k, nil
}
