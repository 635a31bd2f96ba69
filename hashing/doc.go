// Package hashing turns a phone number as a user typed it into the identifier
// a destination receives, exactly as sections 3 and 4 of MATCHING.md (contract
// v1) define it.
//
// # Normalization
//
// [Normalize] parses the input with nyaruka/phonenumbers (the Go port of
// libphonenumber) using upper(country) as the default region, keeps it only if
// libphonenumber calls it a valid number, and formats it as E.164 ("+" and
// digits; an extension is dropped). Input longer than 250 bytes is invalid.
//
//	Normalize("(650)555-1212", "US")  = "+16505551212"
//	Normalize("06 1234 5678", "it")   = "+390612345678"  // Italian fixed lines keep the 0
//
// # Identifiers
//
// The default scheme, hmac-sha256, is keyed:
//
//	K_dest = HKDF-SHA256(IKM = master key, salt = "", info = "audiencematch/v1/" + destination, L = 32)
//	id     = HMAC-SHA256(K_dest, E.164 string with its '+')
//	key_id = first 16 hex digits of SHA-256(K_dest)
//
// With the master key 000102…1e1f and destination "meta-ads":
//
//	K_dest = 4a79cefb1a3e294e0e5eb2c18e315accebbca099574696e0f0eb99336b91902f
//	key_id = d47528a220267f43
//	id(+16505551212) = db79e068b5e2c928a322ce878e419ac120baabb152a69a17ab3a29f04d340ec5
//
// The platform receives only K_dest for its own destination, so identifiers of
// two destinations cannot be joined.
//
// The unkeyed schemes sha256-digits (hex SHA-256 of the digits without '+'),
// sha256-e164 (hex SHA-256 of the E.164 string) and uid2 (standard base64 of
// the raw SHA-256 of the E.164 string) exist for platform compatibility only.
// A SHA-256 of a phone number is reversed in about a second on one GPU, so they
// are personal data in disguise and callers must opt in explicitly.
package hashing
