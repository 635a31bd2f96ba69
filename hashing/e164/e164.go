// Package e164 is a fast path for libphonenumber's Parse, IsValidNumber and
// Format(E164), for the common shapes of input: ASCII digits with spaces,
// dashes, dots and parentheses, and an optional leading '+'.
//
// It follows nyaruka/phonenumbers' own parsing steps (possible-number
// extraction, IDD and country-code extraction, national prefix stripping,
// possible lengths, region selection for shared country codes, and the
// number-type patterns) and reads every rule from the library's own
// metadata. What makes it fast is that each metadata pattern is compiled
// once into a digit automaton instead of being run through a regexp engine.
//
// Anything it is not sure of (other characters, a leftmost-first match end
// that the automaton cannot decide, a parse error) it reports as
// Fallback, and the caller uses the library. Its answers are tested to be
// identical to the library's over millions of generated inputs and by a
// fuzz test.
package e164

import (
	"fmt"
	"math/bits"
	"regexp"
	"slices"
	"strconv"
	"sync"

	"github.com/nyaruka/phonenumbers"
)

// Result says what Normalize decided.
type Result uint8

const (
	// Fallback: the fast path does not decide this input; ask the library.
	Fallback Result = iota
	// Valid: the library parses the input and calls the number valid.
	Valid
	// Invalid: the library parses the input but IsValidNumber is false.
	Invalid
)

// Library limits, as nyaruka/phonenumbers defines them.
const (
	minNSN    = 2
	maxNSN    = 17
	maxDigits = 40 // longer digit strings go to the library (they never parse)
)

// desc is a compiled PhoneNumberDesc.
type desc struct {
	pattern *dfa
	lengths []int32 // possible lengths; empty: no length check
}

// matches is the library's isNumberMatchingDesc.
func (d *desc) matches(nsn []byte) bool {
	if len(d.lengths) > 0 {
		n, ok := int32(len(nsn)), false
		for _, l := range d.lengths {
			if l == n {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return d.pattern.full(nsn)
}

// meta is the compiled part of one region's PhoneMetadata.
type meta struct {
	cc        int
	ccDigits  string
	general   desc
	types     []desc // any match is a known type: mobile, fixed line, then the rarer ones
	lengths   []int32
	localOnly []int32
	idd       *dfa
	leading   *dfa // nil when the region has no leading digits
	npfp      *dfa // nil when there is no national prefix for parsing
	npfpRE    *regexp.Regexp
	transform string
}

// validType is getNumberTypeHelper(nsn) != UNKNOWN.
func (m *meta) validType(nsn []byte) bool {
	if !m.general.matches(nsn) {
		return false
	}
	for i := range m.types {
		if m.types[i].matches(nsn) {
			return true
		}
	}
	return false
}

// Length check results, as testNumberLength returns them.
const (
	isPossible = iota
	isPossibleLocalOnly
	tooShort
	invalidLength
	tooLong
)

// testLength is testNumberLength(number, metadata, UNKNOWN).
func (m *meta) testLength(n int) int {
	if len(m.lengths) == 0 || m.lengths[0] == -1 {
		return invalidLength
	}
	l := int32(n)
	for _, x := range m.localOnly {
		if x == l {
			return isPossibleLocalOnly
		}
	}
	switch {
	case m.lengths[0] == l:
		return isPossible
	case m.lengths[0] > l:
		return tooShort
	case m.lengths[len(m.lengths)-1] < l:
		return tooLong
	}
	for _, x := range m.lengths[1:] {
		if x == l {
			return isPossible
		}
	}
	return invalidLength
}

// stripNationalPrefix is maybeStripNationalPrefixAndCarrierCode without the
// carrier code. ok is false when only the regexp could say.
func (m *meta) stripNationalPrefix(num []byte) (out []byte, ok bool) {
	if len(num) == 0 || m.npfp == nil {
		return num, true
	}
	ends := m.npfp.prefixes(num)
	if ends == 0 {
		return num, true
	}
	viable := m.general.pattern.full(num)
	// Without a transform rule, one possible match end is the match end.
	if m.transform == "" && ends&(ends-1) == 0 {
		end := bits.TrailingZeros64(ends)
		if viable && !m.general.pattern.full(num[end:]) {
			return num, true
		}
		return num[end:], true
	}
	// The library's own steps, on its own regexp.
	s := string(num)
	groups := m.npfpRE.FindStringSubmatchIndex(s)
	if groups == nil {
		return nil, false // cannot happen: the automaton found a match
	}
	n := len(groups)/2 - 1
	if m.transform == "" || groups[n*2] < 0 {
		if viable && !m.general.pattern.full(num[groups[1]:]) {
			return num, true
		}
		return num[groups[1]:], true
	}
	t := m.npfpRE.ReplaceAllString(s, m.transform)
	if !digitsOnly(t) {
		return nil, false
	}
	if viable && !m.general.pattern.full([]byte(t)) {
		return num, true
	}
	return []byte(t), true
}

func digitsOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// tables is the compiled metadata.
type tables struct {
	regions   map[string]*meta // supported regions
	ccRegions map[int][]*meta  // calling code → its regions, main region first
	nonGeo    map[int]*meta    // calling code → "001" metadata
	codes     map[int]bool     // every calling code the library knows
	err       error
	// The same, as arrays for Normalize: a region by its two letters, a
	// calling code (at most three digits) by its value. Looked up in maps,
	// they were a tenth of Normalize's time (finding a calling code tries
	// up to three, each in three maps).
	byRegion [26 * 26]*meta
	byCC     [1000]callingCode
}

// callingCode is what tables knows of one calling code.
type callingCode struct {
	regions []*meta // ccRegions'
	nonGeo  *meta
	known   bool // in ccRegions, nonGeo or codes
}

// region is the supported region r's metadata, or nil.
func (t *tables) region(r string) *meta {
	if i, ok := regionIndex(r); ok {
		return t.byRegion[i]
	}
	return nil
}

// regionIndex is a two-capital-letter region code's place in byRegion.
func regionIndex(r string) (int, bool) {
	if len(r) != 2 || r[0] < 'A' || r[0] > 'Z' || r[1] < 'A' || r[1] > 'Z' {
		return 0, false
	}
	return int(r[0]-'A')*26 + int(r[1]-'A'), true
}

var (
	once sync.Once
	tab  *tables
)

// Preload compiles the metadata now rather than on the first Normalize: a
// caller that will normalize can have it done in the background while it
// does something else (it costs tens of milliseconds of CPU and
// short-lived allocations).
func Preload() { load() }

func load() *tables {
	once.Do(func() { tab = build() })
	return tab
}

func build() *tables {
	t := &tables{regions: map[string]*meta{}, ccRegions: map[int][]*meta{}, nonGeo: map[int]*meta{}}
	coll, err := phonenumbers.MetadataCollection()
	if err != nil {
		t.err = err
		return t
	}
	byRegion := map[string]*meta{}
	dfas := dfaCache{}
	for _, pm := range coll.GetMetadata() {
		m, err := dfas.compileMeta(pm)
		if err != nil {
			// A pattern the automaton cannot model: that region is left
			// to the library.
			continue
		}
		if pm.GetId() == "001" {
			t.nonGeo[m.cc] = m
		} else {
			byRegion[pm.GetId()] = m
		}
	}
	supported := phonenumbers.GetSupportedRegions()
	for r := range supported {
		if m := byRegion[r]; m != nil {
			t.regions[r] = m
		}
	}
	t.codes = phonenumbers.GetSupportedCallingCodes()
	for cc := range t.codes {
		var list []*meta
		complete := true
		for _, r := range phonenumbers.GetRegionCodesForCountryCode(cc) {
			if r == "001" {
				continue
			}
			m := byRegion[r]
			if m == nil || !supported[r] {
				complete = false
				break
			}
			list = append(list, m)
		}
		if complete && len(list) > 0 {
			t.ccRegions[cc] = list
		}
	}
	for r, m := range t.regions {
		i, ok := regionIndex(r)
		if !ok {
			t.err = fmt.Errorf("region code %q is not two capital letters", r)
			return t
		}
		t.byRegion[i] = m
	}
	for cc := range t.byCC {
		c := &t.byCC[cc]
		c.regions, c.nonGeo = t.ccRegions[cc], t.nonGeo[cc]
		_, geo := t.ccRegions[cc]
		c.known = geo || c.nonGeo != nil || t.codes[cc]
	}
	for cc := range t.codes {
		if cc < 0 || cc >= len(t.byCC) {
			t.err = fmt.Errorf("calling code %d has more than three digits", cc)
			return t
		}
	}
	return t
}

// dfaCache compiles each distinct pattern once: of the metadata's 3,556
// patterns only 1,303 differ ("NA", no number, alone is 1,396 of them).
// An automaton is never written after it is built, so regions share it.
type dfaCache map[string]*dfa

func (c dfaCache) compile(p string) (*dfa, error) {
	if d, ok := c[p]; ok {
		return d, nil
	}
	d, err := compileDFA(p)
	if err != nil {
		return nil, err
	}
	c[p] = d
	return d, nil
}

func (c dfaCache) compileDesc(d *phonenumbers.PhoneNumberDesc) (desc, error) {
	p, err := c.compile(d.GetNationalNumberPattern())
	if err != nil {
		return desc{}, err
	}
	return desc{pattern: p, lengths: d.GetPossibleLength()}, nil
}

func (c dfaCache) compileMeta(pm *phonenumbers.PhoneMetadata) (*meta, error) {
	m := &meta{
		cc:        int(pm.GetCountryCode()),
		ccDigits:  strconv.Itoa(int(pm.GetCountryCode())),
		lengths:   pm.GetGeneralDesc().GetPossibleLength(),
		localOnly: pm.GetGeneralDesc().GetPossibleLengthLocalOnly(),
		transform: pm.GetNationalPrefixTransformRule(),
	}
	var err error
	if m.general, err = c.compileDesc(pm.GetGeneralDesc()); err != nil {
		return nil, err
	}
	// The types getNumberTypeHelper tries, the most common first: the order
	// does not change whether some type matches, which is all validity
	// asks, and most numbers are mobile or fixed lines. The mobile pattern
	// counts only where it differs from the fixed line's (where it is the
	// same, a fixed-line match is the library's FIXED_LINE_OR_MOBILE).
	descs := []*phonenumbers.PhoneNumberDesc{pm.GetFixedLine(),
		pm.GetPremiumRate(), pm.GetTollFree(), pm.GetSharedCost(), pm.GetVoip(),
		pm.GetPersonalNumber(), pm.GetPager(), pm.GetUan(), pm.GetVoicemail()}
	if !pm.GetSameMobileAndFixedLinePattern() {
		descs = slices.Insert(descs, 0, pm.GetMobile())
	}
	for _, d := range descs {
		t, err := c.compileDesc(d)
		if err != nil {
			return nil, err
		}
		m.types = append(m.types, t)
	}
	if m.idd, err = c.compile(pm.GetInternationalPrefix()); err != nil {
		return nil, err
	}
	if ld := pm.GetLeadingDigits(); ld != "" {
		if m.leading, err = c.compile(ld); err != nil {
			return nil, err
		}
	}
	if np := pm.GetNationalPrefixForParsing(); np != "" {
		if m.npfp, err = c.compile(np); err != nil {
			return nil, err
		}
		if m.npfpRE, err = regexp.Compile("^(?:" + np + ")"); err != nil {
			return nil, err
		}
	}
	return m, nil
}
