package hashing

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"hash"
)

// Scheme names an identifier scheme of MATCHING.md section 4.
type Scheme string

// The schemes of contract v1.
const (
	HMACSHA256   Scheme = "hmac-sha256"
	SHA256Digits Scheme = "sha256-digits"
	SHA256E164   Scheme = "sha256-e164"
	UID2         Scheme = "uid2"
)

// ParseScheme returns the scheme named s or an error that lists the known ones.
func ParseScheme(s string) (Scheme, error) {
	switch sc := Scheme(s); sc {
	case HMACSHA256, OPRFRistretto255, SHA256Digits, SHA256E164, UID2:
		return sc, nil
	}
	return "", fmt.Errorf("unknown scheme %q: use one of %v", s, Schemes())
}

// Schemes lists every scheme, keyed first.
func Schemes() []Scheme {
	return []Scheme{HMACSHA256, OPRFRistretto255, SHA256Digits, SHA256E164, UID2}
}

// Keyed reports whether the scheme needs a key. Unkeyed schemes are reversible
// by brute force and need an explicit opt-in.
func (s Scheme) Keyed() bool { return s == HMACSHA256 || s == OPRFRistretto255 }

// Binary reports whether identifiers are raw bytes (Parquet
// FIXED_LEN_BYTE_ARRAY(IDLen)) rather than text.
func (s Scheme) Binary() bool { return s == HMACSHA256 || s == OPRFRistretto255 }

// IDLen is the exact length of one identifier: 32 raw bytes (hmac-sha256),
// 64 raw bytes (oprf-ristretto255), 64 hex characters or 44 base64
// characters.
func (s Scheme) IDLen() int {
	switch s {
	case HMACSHA256:
		return sha256.Size
	case OPRFRistretto255:
		return OPRFIDLen
	case UID2:
		return base64.StdEncoding.EncodedLen(sha256.Size)
	default:
		return hex.EncodedLen(sha256.Size)
	}
}

// Hasher computes identifiers of one scheme. It reuses its keyed state, so a
// Hasher is not safe for concurrent use: give each goroutine its own
// (NewHasher is cheap).
type Hasher struct {
	scheme Scheme
	mac    hash.Hash   // hmac-sha256 only
	oprf   *OPRFServer // oprf-ristretto255 only
	sum    [sha256.Size]byte
	buf    []byte // the number's bytes: a string converted per call would allocate
}

// NewHasher returns a Hasher for scheme; key is used only by keyed schemes:
// K_dest for hmac-sha256, skS (DeriveOPRFKey) for oprf-ristretto255.
func NewHasher(scheme Scheme, key DestKey) (*Hasher, error) {
	h := &Hasher{scheme: scheme}
	switch scheme {
	case HMACSHA256:
		h.mac = hmac.New(sha256.New, key[:])
	case OPRFRistretto255:
		var err error
		if h.oprf, err = NewOPRFServer(key); err != nil {
			return nil, err
		}
	case SHA256Digits, SHA256E164, UID2:
	default:
		return nil, fmt.Errorf("unknown scheme %q", scheme)
	}
	return h, nil
}

// AppendID appends the identifier of e164 (a string Normalize returned) to
// dst: raw bytes for the binary schemes, the text encoding otherwise.
func (h *Hasher) AppendID(dst []byte, e164 string) []byte {
	switch h.scheme {
	case HMACSHA256:
		h.buf = append(h.buf[:0], e164...)
		h.mac.Reset()
		h.mac.Write(h.buf)
		return h.mac.Sum(dst)
	case OPRFRistretto255:
		id, err := h.oprf.Evaluate(e164)
		if err != nil {
			// RFC 9497 fails only when the input hashes to the identity,
			// which happens with probability about 2^-252.
			panic("hashing: oprf evaluation: " + err.Error())
		}
		return append(dst, id...)
	case SHA256Digits:
		h.sum = sha256.Sum256([]byte(e164[1:]))
		return hex.AppendEncode(dst, h.sum[:])
	case SHA256E164:
		h.sum = sha256.Sum256([]byte(e164))
		return hex.AppendEncode(dst, h.sum[:])
	case UID2:
		h.sum = sha256.Sum256([]byte(e164))
		return base64.StdEncoding.AppendEncode(dst, h.sum[:])
	}
	panic("hashing: unreachable scheme " + string(h.scheme))
}

// ID returns the identifier of e164 as a string (raw bytes for the binary
// schemes).
func (h *Hasher) ID(e164 string) string { return string(h.AppendID(nil, e164)) }

// ValidID reports whether id has the exact shape of the scheme's identifiers:
// IDLen raw bytes, 64 lowercase hex characters, or 44 standard base64
// characters.
func (s Scheme) ValidID(id []byte) bool {
	if len(id) != s.IDLen() {
		return false
	}
	switch s {
	case HMACSHA256, OPRFRistretto255:
		return true
	case UID2:
		b, err := base64.StdEncoding.DecodeString(string(id))
		return err == nil && len(b) == sha256.Size
	default:
		for _, c := range id {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
		return true
	}
}

// KeyID names a keyed scheme's key without revealing it: the first 16 hex
// digits of SHA-256(K_dest) for hmac-sha256, of SHA-256(SerializeElement(pkS))
// for oprf-ristretto255 (MATCHING.md section 4); "" for unkeyed schemes or
// a key that is not one of the scheme's.
func (s Scheme) KeyID(key DestKey) string {
	switch s {
	case HMACSHA256:
		return key.KeyID()
	case OPRFRistretto255:
		srv, err := NewOPRFServer(key)
		if err != nil {
			return ""
		}
		return srv.KeyID()
	}
	return ""
}
