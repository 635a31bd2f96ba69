package e164

import (
	"math/bits"
	"strings"
	"unicode/utf8"
)

// Normalize decides, when it can, what
//
//	n, err := phonenumbers.Parse(phone, region)
//	err == nil && phonenumbers.IsValidNumber(n)
//
// is, and returns phonenumbers.Format(n, E164) for a valid number. region
// must already be what the library is given (upper-cased). With Fallback,
// e164 is empty and the caller must ask the library.
func Normalize(phone, region string) (e164 string, res Result) {
	t := load()
	if t.err != nil {
		return "", Fallback
	}
	// The accepted shapes: an optional "tel:" prefix, then digits (ASCII, or
	// the Arabic-Indic, extended Arabic-Indic and full-width digits that the
	// library's normalize() turns into ASCII), the ASCII separators below,
	// and at most one '+' or '＋' before the first digit. For these,
	// extractPossibleNumber starts at the plus or the first digit (dropping
	// "tel:") and drops trailing separators; no extension, second number,
	// letter or RFC 3966 parameter can be present; normalize() keeps the
	// digits; and with 3 or more digits the string is a viable number.
	phone = stripExtension(phone)
	var buf [maxDigits]byte
	nd, plus := 0, false
	for i := len(telPrefix) * b2i(strings.HasPrefix(phone, telPrefix)); i < len(phone); {
		c := phone[i]
		d := byte(0)
		switch {
		case '0' <= c && c <= '9':
			d, i = c, i+1
		case c == '+':
			if plus || nd > 0 {
				return "", Fallback
			}
			plus, i = true, i+1
			continue
		case c == ' ' || c == '-' || c == '.' || c == '(' || c == ')':
			i++
			continue
		case c < utf8.RuneSelf:
			return "", Fallback
		default:
			r, size := utf8.DecodeRuneInString(phone[i:])
			i += size
			if r == '＋' {
				if plus || nd > 0 {
					return "", Fallback
				}
				plus = true
				continue
			}
			if d = otherDigit(r); d == 0 {
				return "", Fallback
			}
		}
		if nd == maxDigits {
			return "", Fallback
		}
		buf[nd] = d
		nd++
	}
	if nd < 3 {
		return "", Fallback
	}
	if region == "001" {
		return "", Fallback // the library then has no metadata to strip a national prefix with
	}
	digits := buf[:nd]
	def := t.region(region) // nil: not a supported region
	var (
		cc       int
		national []byte
		rm       *meta // the metadata parseHelper strips the national prefix with
	)
	switch {
	case plus:
		cc, national = t.countryCode(digits)
		if cc == 0 {
			return "", Fallback
		}
		if rm = t.mainMeta(cc); rm == nil {
			return "", Fallback
		}
	case def == nil:
		return "", Fallback // the library refuses a missing region without a '+'
	default:
		switch ends := def.idd.prefixes(digits); {
		case ends == 0:
		case ends&(ends-1) != 0:
			return "", Fallback // the leftmost-first match end is the regexp's to say
		default:
			end := bits.TrailingZeros64(ends)
			if end < nd && digits[end] == '0' {
				break // country calling codes do not start with 0: not an IDD
			}
			rest := digits[end:]
			if len(rest) <= minNSN {
				return "", Fallback
			}
			if cc, national = t.countryCode(rest); cc == 0 {
				return "", Fallback
			}
			if rm = t.mainMeta(cc); rm == nil {
				return "", Fallback
			}
		}
		if cc != 0 {
			break
		}
		// No IDD: does the number start with the region's own calling code?
		if n := len(def.ccDigits); nd >= n && string(digits[:n]) == def.ccDigits {
			pot, ok := def.stripNationalPrefix(digits[n:])
			if !ok {
				return "", Fallback
			}
			fullValid := def.general.pattern.full(digits)
			natValid := def.general.pattern.full(pot)
			if (!fullValid && natValid) || def.testLength(nd) == tooLong {
				cc, national = def.cc, pot
				if rm = t.mainMeta(cc); rm == nil {
					return "", Fallback
				}
			}
		}
		if cc == 0 {
			cc, national, rm = def.cc, digits, def
		}
	}
	if len(national) < minNSN {
		return "", Fallback
	}
	pot, ok := rm.stripNationalPrefix(national)
	if !ok {
		return "", Fallback
	}
	switch rm.testLength(len(pot)) {
	case tooShort, isPossibleLocalOnly, invalidLength:
	default:
		national = pot
	}
	if len(national) < minNSN || len(national) > maxNSN {
		return "", Fallback
	}
	valid, ok := t.valid(cc, national)
	if !ok {
		return "", Fallback
	}
	if !valid {
		return "", Invalid
	}
	out := make([]byte, 0, 1+3+len(national))
	out = append(out, '+')
	out = appendInt(out, cc)
	out = append(out, national...)
	return string(out), Valid
}

const telPrefix = "tel:"

// stripExtension drops an extension of the few forms below from the end of
// phone, when what precedes it ends in an ASCII digit: one of the labels
// then 1 to 9 ASCII digits (within every limit of the library's extension
// patterns). For such an input the library's maybeStripExtension strips
// exactly this: the rest has no letter, comma, semicolon, '#' or '~', so
// its EXTN_PATTERN match can start nowhere earlier than the label, and
// with the rest viable the whole is too; after that the library parses
// the rest as if it had been given alone, and E.164 has no extension.
// Anything else is left in place, where its letters send it to the library.
func stripExtension(phone string) string {
	i := len(phone)
	for i > 0 && '0' <= phone[i-1] && phone[i-1] <= '9' {
		i--
	}
	if n := len(phone) - i; n == 0 || n > 9 {
		return phone
	}
	for _, label := range extLabels {
		if rest, ok := strings.CutSuffix(phone[:i], label); ok {
			if rest != "" && '0' <= rest[len(rest)-1] && rest[len(rest)-1] <= '9' {
				return rest
			}
			return phone
		}
	}
	return phone
}

// extLabels are the extension labels stripExtension knows (" x " before " x").
var extLabels = []string{" ext. ", " ext ", " x ", " x", ";ext="}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// otherDigit maps the digits nyaruka/phonenumbers' normalizeDigits converts
// (its arabicIndicNumberals table) to ASCII; 0 for any other rune.
func otherDigit(r rune) byte {
	switch {
	case r >= '٠' && r <= '٩': // U+0660-0669
		return byte('0' + r - '٠')
	case r >= '۰' && r <= '۹': // U+06F0-06F9
		return byte('0' + r - '۰')
	case r >= '０' && r <= '９': // U+FF10-FF19
		return byte('0' + r - '０')
	}
	return 0
}

// countryCode is extractCountryCode: the first 1 to 3 digits that are a
// known calling code (never starting with 0), or 0.
func (t *tables) countryCode(d []byte) (int, []byte) {
	if len(d) == 0 || d[0] == '0' {
		return 0, nil
	}
	cc := 0
	for i := 0; i < 3 && i < len(d); i++ {
		cc = cc*10 + int(d[i]-'0')
		if t.known(cc) {
			return cc, d[i+1:]
		}
	}
	return 0, nil
}

// known reports whether the library has cc in its calling code map. A code
// whose metadata the automaton could not compile is unknown here, which
// sends its numbers to the library.
func (t *tables) known(cc int) bool { return t.byCC[cc].known }

// mainMeta is the metadata parseHelper uses for a number with calling code
// cc: its main region's, or the non-geographical entity's.
func (t *tables) mainMeta(cc int) *meta {
	c := &t.byCC[cc]
	if c.nonGeo != nil {
		return c.nonGeo
	}
	if len(c.regions) > 0 {
		return c.regions[0]
	}
	return nil
}

// valid is IsValidNumber for the number with calling code cc and national
// significant number nsn. ok is false when the tables cannot say.
func (t *tables) valid(cc int, nsn []byte) (valid, ok bool) {
	c := &t.byCC[cc]
	if c.nonGeo != nil {
		return c.nonGeo.validType(nsn), true
	}
	list := c.regions
	if list == nil {
		return false, false
	}
	if len(list) == 1 {
		return list[0].validType(nsn), true
	}
	// getRegionCodeForNumberFromRegionList: the first region whose leading
	// digits match, or (for a region without them) where the number has a
	// known type; then the number is checked against that region.
	for _, m := range list {
		if m.leading != nil {
			if m.leading.prefixes(nsn) != 0 {
				return m.validType(nsn), true
			}
		} else if m.validType(nsn) {
			return true, true
		}
	}
	return false, true
}

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}
