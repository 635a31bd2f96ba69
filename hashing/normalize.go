package hashing

import (
	"errors"
	"strings"

	"github.com/nyaruka/phonenumbers"
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

// Normalize returns the E.164 form of phone, parsed with default region
// upper(country), or an error when libphonenumber does not call it valid.
func Normalize(phone, country string) (string, error) {
	if len(phone) > MaxPhoneBytes {
		return "", ErrPhoneTooLong
	}
	if phone == "" {
		return "", ErrPhoneEmpty
	}
	num, err := phonenumbers.Parse(phone, strings.ToUpper(country))
	if err != nil {
		return "", ErrPhoneUnparsed
	}
	if !phonenumbers.IsValidNumber(num) {
		return "", ErrPhoneInvalid
	}
	return phonenumbers.Format(num, phonenumbers.E164), nil
}
