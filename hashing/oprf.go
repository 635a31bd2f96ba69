package hashing

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
)

// OPRFRistretto255 is the oblivious scheme of MATCHING.md section 4
// (amendment 2): an RFC 9497 OPRF, mode 0x00, suite ristretto255-SHA512.
const OPRFRistretto255 Scheme = "oprf-ristretto255"

// oprfInfoPrefix is both the HKDF info prefix of the seed and the
// DeriveKeyPair info prefix (MATCHING.md section 4, amendment 2).
const oprfInfoPrefix = "audiencematch/v1/oprf/"

// OPRF sizes: a serialized ristretto255 element or scalar (RFC 9497 section
// 4.1) and the output of Finalize for SHA-512.
const (
	ElementLen = 32
	ScalarLen  = 32
	OPRFIDLen  = 64
)

var oprfSuite = oprf.SuiteRistretto255

// DeriveOPRFSeed computes seed = HKDF-SHA256(master, salt = "", info =
// "audiencematch/v1/oprf/" + destination, L = 32).
func DeriveOPRFSeed(master MasterKey, destination string) ([32]byte, error) {
	return derive32(master, oprfInfoPrefix+destination)
}

// DeriveOPRFKey computes the destination's OPRF private key skS =
// DeriveKeyPair(seed, info = "audiencematch/v1/oprf/" + destination) (RFC 9497
// section 3.2.1, mode OPRF), serialized as a scalar (RFC 9497 section 4.1):
// the DestKey a run of oprf-ristretto255 holds.
func DeriveOPRFKey(master MasterKey, destination string) (DestKey, error) {
	seed, err := DeriveOPRFSeed(master, destination)
	if err != nil {
		return DestKey{}, err
	}
	return oprfKeyOfSeed(seed, destination)
}

func oprfKeyOfSeed(seed [32]byte, destination string) (DestKey, error) {
	var k DestKey
	sk, err := oprf.DeriveKey(oprfSuite, oprf.BaseMode, seed[:], []byte(oprfInfoPrefix+destination))
	if err != nil {
		return k, fmt.Errorf("derive oprf key for %q: %w", destination, err)
	}
	b, err := sk.MarshalBinary()
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("derive oprf key for %q: serialize: %v", destination, err)
	}
	copy(k[:], b)
	return k, nil
}

// OPRFServer is the exporter's side of the scheme: the private key of one
// destination. It is safe for concurrent use.
type OPRFServer struct {
	sk  *oprf.PrivateKey
	srv oprf.Server
	pk  [ElementLen]byte
}

// ErrOPRFKey is returned for bytes that are not a valid OPRF private key.
var ErrOPRFKey = errors.New("not an oprf-ristretto255 private key")

// NewOPRFServer decodes skS as DeriveOPRFKey returns it.
func NewOPRFServer(skS DestKey) (*OPRFServer, error) {
	sk := new(oprf.PrivateKey)
	if err := sk.UnmarshalBinary(oprfSuite, skS[:]); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrOPRFKey, err)
	}
	pk, err := sk.Public().MarshalBinary()
	if err != nil || len(pk) != ElementLen {
		return nil, fmt.Errorf("%w: public key: %v", ErrOPRFKey, err)
	}
	s := &OPRFServer{sk: sk, srv: oprf.NewServer(oprfSuite, sk)}
	copy(s.pk[:], pk)
	return s, nil
}

// PublicKey is SerializeElement(pkS).
func (s *OPRFServer) PublicKey() [ElementLen]byte { return s.pk }

// KeyID is the first 16 hex digits of SHA-256(SerializeElement(pkS))
// (MATCHING.md section 4, amendment 2).
func (s *OPRFServer) KeyID() string {
	sum := sha256.Sum256(s.pk[:])
	return hex.EncodeToString(sum[:8])
}

// Evaluate is the identifier of e164 computed directly: the RFC 9497
// output for input = the E.164 string's bytes, equal to Finalize of
// BlindEvaluate of any blinding of it (RFC 9497 section 3.3.1).
func (s *OPRFServer) Evaluate(e164 string) ([]byte, error) {
	return s.srv.FullEvaluate([]byte(e164))
}

// ErrElement is returned for a blinded element that is not the canonical
// encoding of a ristretto255 element other than the identity, which RFC
// 9497 section 3.3.1 requires the server to refuse.
var ErrElement = errors.New("not a valid non-identity ristretto255 element")

// DecodeElement decodes a serialized element, refusing the identity and any
// non-canonical encoding (RFC 9497 sections 3.3.1 and 4.1: DeserializeElement).
func DecodeElement(b []byte) (group.Element, error) {
	if len(b) != ElementLen {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrElement, len(b), ElementLen)
	}
	e := oprfSuite.Group().NewElement()
	if err := e.UnmarshalBinary(b); err != nil {
		return nil, ErrElement
	}
	if e.IsIdentity() {
		return nil, fmt.Errorf("%w: the identity", ErrElement)
	}
	return e, nil
}

// BlindEvaluate evaluates serialized blinded elements (RFC 9497 section
// 3.3.1, mode OPRF): evaluated[i] = skS * blinded[i], serialized. Every
// element is decoded first; the first invalid one is returned as an
// *ElementError and nothing is evaluated.
func (s *OPRFServer) BlindEvaluate(blinded [][]byte) ([][]byte, error) {
	elems := make([]group.Element, len(blinded))
	for i, b := range blinded {
		e, err := DecodeElement(b)
		if err != nil {
			return nil, &ElementError{Index: i, Err: err}
		}
		elems[i] = e
	}
	if len(elems) == 0 {
		return nil, nil
	}
	ev, err := s.srv.Evaluate(&oprf.EvaluationRequest{Elements: elems})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(ev.Elements))
	for i, e := range ev.Elements {
		if out[i], err = e.MarshalBinaryCompress(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ElementError names the row of a request whose element is invalid.
type ElementError struct {
	Index int // 0-based
	Err   error
}

func (e *ElementError) Error() string { return fmt.Sprintf("element %d: %v", e.Index, e.Err) }
func (e *ElementError) Unwrap() error { return e.Err }

// OPRFBlind is the client's side of one input (RFC 9497 section 3.3.1,
// Blind): its blind scalar and the blinded element to send, serialized.
type OPRFBlind struct {
	Blind   [ScalarLen]byte
	Blinded [ElementLen]byte
}

// BlindE164 blinds the E.164 string's bytes with a fresh random scalar.
func BlindE164(e164 string) (OPRFBlind, error) {
	return blindWith(e164, oprfSuite.Group().RandomScalar(rand.Reader))
}

// blindWith blinds e164 with the given scalar.
func blindWith(e164 string, r group.Scalar) (OPRFBlind, error) {
	var b OPRFBlind
	_, req, err := oprf.NewClient(oprfSuite).DeterministicBlind([][]byte{[]byte(e164)}, []oprf.Blind{r})
	if err != nil {
		return b, err
	}
	blinded, err := req.Elements[0].MarshalBinaryCompress()
	if err != nil {
		return b, err
	}
	sb, err := r.MarshalBinary()
	if err != nil {
		return b, err
	}
	copy(b.Blinded[:], blinded)
	copy(b.Blind[:], sb)
	return b, nil
}

// FinalizeE164 is the client's Finalize (RFC 9497 section 3.3.1): the
// identifier of e164 from its blind and the server's serialized evaluated
// element; an evaluated element that is invalid or the identity is
// ErrElement.
func FinalizeE164(e164 string, blind [ScalarLen]byte, evaluated []byte) ([]byte, error) {
	ev, err := DecodeElement(evaluated)
	if err != nil {
		return nil, err
	}
	r := oprfSuite.Group().NewScalar()
	if err := r.UnmarshalBinary(blind[:]); err != nil {
		return nil, fmt.Errorf("blind: %w", err)
	}
	c := oprf.NewClient(oprfSuite)
	fin, _, err := c.DeterministicBlind([][]byte{[]byte(e164)}, []oprf.Blind{r})
	if err != nil {
		return nil, err
	}
	out, err := c.Finalize(fin, &oprf.Evaluation{Elements: []oprf.Evaluated{ev}})
	if err != nil {
		return nil, err
	}
	return out[0], nil
}
