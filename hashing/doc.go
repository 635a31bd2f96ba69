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
// The oblivious scheme oprf-ristretto255 (amendment 2) is an RFC 9497 OPRF,
// mode OPRF (0x00), suite ristretto255-SHA512, whose key the destination
// never receives:
//
//	seed   = HKDF-SHA256(IKM = master key, salt = "", info = "audiencematch/v1/oprf/" + destination, L = 32)
//	skS    = DeriveKeyPair(seed, info = "audiencematch/v1/oprf/" + destination)   (RFC 9497 section 3.2.1)
//	id     = the OPRF output for input = E.164 string with its '+' (64 bytes)
//	key_id = first 16 hex digits of SHA-256(SerializeElement(pkS))
//
// With the master key 000102…1e1f and destination "meta-ads":
//
//	seed   = 6f8cee38fe740676fddd414f0fbcb351d49ab00bc90d31f13866f38674144cb8
//	pkS    = 0c8e41d61142f911a044d80d2f6c80e3c039d2f160690d1ff5a40c0bb58bf501
//	key_id = 89fa0444ee6d7862
//	id(+16505551212) = 8dc6681dcab189d1349d1870e600201312d3ffaf1fb3008ec31fb9231c775ee3…e51472
//
// The exporter computes identifiers directly (the full evaluation, RFC 9497
// section 3.3.1); the destination obtains the identifier of a number it
// holds only by blinding it (BlindE164), having the exporter evaluate the
// blinded element (OPRFServer.BlindEvaluate, which refuses the identity and
// non-canonical encodings) and finalizing (FinalizeE164). A run holds skS as
// its DestKey (Key.ForScheme). The group and hash-to-curve code is
// cloudflare/circl's oprf package.
//
// The unkeyed schemes sha256-digits (hex SHA-256 of the digits without '+'),
// sha256-e164 (hex SHA-256 of the E.164 string) and uid2 (standard base64 of
// the raw SHA-256 of the E.164 string) exist for platform compatibility only.
// A SHA-256 of a phone number is reversed in about a second on one GPU, so they
// are personal data in disguise and callers must opt in explicitly.
package hashing
