package hashing

import (
	"errors"
	"strings"

	"github.com/nyaruka/phonenumbers"

	"audiencematch/hashing/e164"
)

// MaxPhoneBytes is the longest input MATCHING.md accepts.
const MaxPhoneBytes = 250

// Reasons Normalize rejects a number. They are deliberately coarse: the
// pipeline counts them, it never logs the number itself.
var (
	ErrPhoneEmpty    = errors.New("empty phone")
	ErrPhoneTooLong  = errors.New("phone longer than 250 bytes")
	ErrPhoneUnparsed = errors.New("phone not parseable")
	ErrPhoneInvalid  = errors.New("phone not a valid number")
)

// Preload prepares what Normalize needs (see e164.Preload), so that its
// first call does not wait for it.
func Preload() { e164.Preload() }

// Normalize returns the E.164 form of phone, parsed with default region
// upper(country), or an error when libphonenumber does not call it valid.
// Common shapes take the metadata-driven fast path of package e164, whose
// answers are the library's; everything else goes to the library.
func Normalize(phone, country string) (string, error) {
	if len(phone) > MaxPhoneBytes {
		return "", ErrPhoneTooLong
	}
	if phone == "" {
		return "", ErrPhoneEmpty
	}
	region := strings.ToUpper(country)
	switch e, res := e164.Normalize(phone, region); res {
	case e164.Valid:
		return e, nil
	case e164.Invalid:
		return "", ErrPhoneInvalid
	}
	return normalizeLibrary(phone, region)
}

// normalizeLibrary is Normalize by nyaruka/phonenumbers alone.
func normalizeLibrary(phone, region string) (string, error) {
	num, err := phonenumbers.Parse(phone, region)
	if err != nil {
		return "", ErrPhoneUnparsed
	}
	if !phonenumbers.IsValidNumber(num) {
		return "", ErrPhoneInvalid
	}
	return phonenumbers.Format(num, phonenumbers.E164), nil
}
