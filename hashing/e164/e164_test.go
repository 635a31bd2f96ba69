package e164

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nyaruka/phonenumbers"
)

// library is the reference: what the fast path claims to decide.
func library(phone, region string) (string, Result, error) {
	n, err := phonenumbers.Parse(phone, region)
	if err != nil {
		return "", Fallback, err
	}
	if !phonenumbers.IsValidNumber(n) {
		return "", Invalid, nil
	}
	return phonenumbers.Format(n, phonenumbers.E164), Valid, nil
}

// check compares the fast path with the library on one input; it returns
// the fast path's result.
func check(t testing.TB, phone, region string) Result {
	got, res := Normalize(phone, region)
	if res == Fallback {
		if got != "" {
			t.Errorf("Normalize(%q, %q) = %q with Fallback", phone, region, got)
		}
		return res
	}
	want, wres, err := library(phone, region)
	if err != nil || got != want || res != wres {
		t.Errorf("Normalize(%q, %q) = %q, %v; the library says %q, %v, %v", phone, region, got, res, want, wres, err)
	}
	return res
}

func TestAllMetadataCompiles(t *testing.T) {
	tb := load()
	if tb.err != nil {
		t.Fatal(tb.err)
	}
	// Every region and calling code must be on the fast path: a pattern the
	// automaton cannot model would silently make those numbers slow.
	for r := range phonenumbers.GetSupportedRegions() {
		if tb.regions[r] == nil {
			t.Errorf("region %s is not compiled", r)
		}
	}
	for cc := range phonenumbers.GetSupportedCallingCodes() {
		if tb.mainMeta(cc) == nil {
			t.Errorf("calling code %d is not compiled", cc)
		}
	}
}

func TestKnownAnswers(t *testing.T) {
	for _, c := range []struct {
		phone, region, want string
		res                 Result
	}{
		// MATCHING.md's vectors.
		{"(650)555-1212", "US", "+16505551212", Valid},
		{"1 (234) 567-8901", "US", "+12345678901", Valid},
		{"06 1234 5678", "IT", "+390612345678", Valid},
		{"+16502531234", "", "+16502531234", Valid},
		// National prefix, IDD, the region's own calling code without '+'.
		{"020 7946 0018", "GB", "+442079460018", Valid},
		{"00 44 20 7946 0018", "DE", "+442079460018", Valid},
		{"011 44 20 7946 0018", "US", "+442079460018", Valid},
		{"44 20 7946 0018", "GB", "+442079460018", Valid},
		{"+44 (0)20 7946 0018", "", "+442079460018", Valid},
		// Shared calling code: a Canadian area code under the US hint.
		{"(123) 456-7890", "US", "", Invalid}, // no area code starts with 1
		{"(604) 253-1234", "US", "+16042531234", Valid},
		// Non-geographical entity.
		{"+800 1234 5678", "", "+80012345678", Valid},
		// Not for the fast path: letters, a second '+', two digits, no region.
		{"+1 650 253 1234 ext. 5", "", "+16502531234", Valid},
		{"(650) 253-1234 x305", "US", "+16502531234", Valid},
		{"tel:+1-650-253-1234;ext=44", "", "+16502531234", Valid},
		{"(123) 456-7890 ext 5", "US", "", Invalid},
		{"+1 650 253 1234 EXT. 5", "", "", Fallback},      // upper case: the library's
		{"+1 650 253 1234 x1234567890", "", "", Fallback}, // ten digits: beyond " x"'s nine
		{"+1 650 253 1234- x5", "", "", Fallback},         // not after a digit
		{"+1 650 253 1234 ext. ", "", "", Fallback},       // no extension digits
		{"++16502531234", "", "", Fallback},
		{"12", "US", "", Fallback},
		{"6502531234", "", "", Fallback},
		{"６５０２５３１２３４", "US", "+16502531234", Valid},
		{"tel:+1-650-253-1234", "", "+16502531234", Valid},
		{"٠٢٠ ٧٩٤٦ ٠٠١٨", "GB", "+442079460018", Valid},
		{"१२३४५६७८९०", "IN", "", Fallback}, // Devanagari: not converted by the library
		{"TEL:+16502531234", "", "", Fallback},
	} {
		got, res := Normalize(c.phone, c.region)
		if got != c.want || res != c.res {
			t.Errorf("Normalize(%q, %q) = %q, %v; want %q, %v", c.phone, c.region, got, res, c.want, c.res)
		}
		if res != Fallback {
			check(t, c.phone, c.region)
		}
	}
}

// template is a number of one region to render in many styles.
type template struct {
	region string // "001" for a non-geographical entity
	cc     int
	nsn    string
}

func templates() []template {
	var out []template
	types := []phonenumbers.PhoneNumberType{
		phonenumbers.FIXED_LINE, phonenumbers.MOBILE, phonenumbers.TOLL_FREE, phonenumbers.PREMIUM_RATE,
		phonenumbers.SHARED_COST, phonenumbers.VOIP, phonenumbers.PERSONAL_NUMBER, phonenumbers.PAGER,
		phonenumbers.UAN, phonenumbers.VOICEMAIL,
	}
	regions := make([]string, 0, 256)
	for r := range phonenumbers.GetSupportedRegions() {
		regions = append(regions, r)
	}
	slices.Sort(regions)
	for _, r := range regions {
		for _, ty := range types {
			if n := phonenumbers.GetExampleNumberForType(r, ty); n != nil {
				out = append(out, template{r, int(n.GetCountryCode()), phonenumbers.GetNationalSignificantNumber(n)})
			}
		}
	}
	codes := make([]int, 0, 16)
	for cc := range phonenumbers.GetSupportedGlobalNetworkCallingCodes() {
		codes = append(codes, cc)
	}
	slices.Sort(codes)
	for _, cc := range codes {
		if n := phonenumbers.GetExampleNumberForNonGeoEntity(cc); n != nil {
			out = append(out, template{"001", cc, phonenumbers.GetNationalSignificantNumber(n)})
		}
	}
	return out
}

// generator renders numbers of every region in every input style.
type generator struct {
	rng     *rand.Rand
	tpl     []template
	regions []string
}

func newGenerator(seed uint64) *generator {
	g := &generator{rng: rand.New(rand.NewPCG(seed, 0x5eed)), tpl: templates()}
	for r := range phonenumbers.GetSupportedRegions() {
		g.regions = append(g.regions, r)
	}
	slices.Sort(g.regions)
	return g
}

// styles is the number of input styles; TestDifferential reports each.
const styles = 20

func (g *generator) digit() byte { return byte('0' + g.rng.IntN(10)) }

// mutate changes a national number the way data entry and data rot do,
// so that near-valid, invalid and other-type numbers are all produced.
func (g *generator) mutate(nsn string) string {
	b := []byte(nsn)
	switch g.rng.IntN(8) {
	case 0, 1, 2: // kept: a valid example number
	case 3: // new subscriber digits
		for i := max(0, len(b)-1-g.rng.IntN(min(len(b), 6))); i < len(b); i++ {
			b[i] = g.digit()
		}
	case 4: // one digit more
		b = append(b, g.digit())
	case 5: // one digit fewer
		if len(b) > 1 {
			b = b[:len(b)-1]
		}
	case 6: // another leading digit
		b[0] = g.digit()
	case 7: // all random, same length
		for i := range b {
			b[i] = g.digit()
		}
	}
	return string(b)
}

// spaced inserts separators between digits at random.
func (g *generator) spaced(digits string, seps string) string {
	var s strings.Builder
	for i := 0; i < len(digits); i++ {
		if i > 0 && g.rng.IntN(3) == 0 {
			s.WriteByte(seps[g.rng.IntN(len(seps))])
		}
		s.WriteByte(digits[i])
	}
	return s.String()
}

func (g *generator) otherRegion() string { return g.regions[g.rng.IntN(len(g.regions))] }

func (g *generator) homeRegion(tp template) string {
	if tp.region == "001" {
		return g.otherRegion()
	}
	return tp.region
}

// next returns one input (phone, region) and its style.
func (g *generator) next() (phone, region string, style int) {
	tp := g.tpl[g.rng.IntN(len(g.tpl))]
	nsn := g.mutate(tp.nsn)
	cc := strconv.Itoa(tp.cc)
	style = g.rng.IntN(styles)
	region = g.homeRegion(tp)
	switch style {
	case 0: // E.164
		phone = "+" + cc + nsn
	case 1: // international, spaced, with any or no hint
		phone = "+" + cc + " " + g.spaced(nsn, " ")
		region = [...]string{region, "", g.otherRegion()}[g.rng.IntN(3)]
	case 2: // the library's own international format
		phone = g.format(cc+nsn, phonenumbers.INTERNATIONAL)
	case 3: // the library's national format, home hint
		phone = g.format(cc+nsn, phonenumbers.NATIONAL)
	case 4: // national format's digits only
		phone = phonenumbers.NormalizeDigitsOnly(g.format(cc+nsn, phonenumbers.NATIONAL))
	case 5: // national significant number, home hint
		phone = nsn
	case 6: // national significant number with dashes, dots, parentheses
		phone = g.spaced(nsn, "-.() ")
	case 7: // IDD: the home region's or a common one, from another region
		idd := [...]string{"00", "011", "810", "0011", "001", "00 1"}[g.rng.IntN(6)]
		phone = idd + " " + cc + " " + g.spaced(nsn, " -")
		region = g.otherRegion()
	case 8: // calling code without '+', home hint
		phone = cc + g.spaced(nsn, " ")
	case 9: // E.164 digits without '+', another region's hint
		phone = cc + nsn
		region = g.otherRegion()
	case 10: // a hint the library may not know
		phone = [...]string{"+" + cc + nsn, nsn, "0" + nsn}[g.rng.IntN(3)]
		region = [...]string{"", "ZZ", "001", strings.ToLower(region), "U"}[g.rng.IntN(5)]
	case 11: // wrapped: "(+44) 20 ...", trailing junk, leading spaces
		phone = [...]string{"(+" + cc + ") " + nsn, "  +" + cc + nsn + " ", "+" + cc + "-" + nsn + ")", "(0)" + nsn, "+" + cc + " (0) " + nsn}[g.rng.IntN(5)]
	case 12: // national prefix doubled or misplaced
		phone = [...]string{"0" + nsn, "00" + nsn, "1" + nsn, "+" + cc + "0" + nsn, cc + "0" + nsn}[g.rng.IntN(5)]
	case 13: // random digits with a random hint
		n := 3 + g.rng.IntN(16)
		b := make([]byte, n)
		for i := range b {
			b[i] = g.digit()
		}
		phone = [...]string{"", "+"}[g.rng.IntN(2)] + string(b)
		region = g.otherRegion()
	case 14: // extensions, letters and other characters (the library's path)
		phone = [...]string{
			"+" + cc + nsn + " ext. 12", "+" + cc + nsn + " x7", "tel:+" + cc + nsn, nsn + "#",
			"+" + cc + "/" + nsn, "+" + cc + nsn + ";ext=5", "１" + nsn, "+" + cc + "ABC" + nsn,
		}[g.rng.IntN(8)]
	case 16: // full-width digits and plus
		phone = toDigits(g.format(cc+nsn, [...]phonenumbers.PhoneNumberFormat{phonenumbers.INTERNATIONAL, phonenumbers.NATIONAL}[g.rng.IntN(2)]), '０', "＋")
	case 17: // Arabic-Indic and extended Arabic-Indic digits, national format
		phone = toDigits(g.format(cc+nsn, phonenumbers.NATIONAL), [...]rune{'٠', '۰'}[g.rng.IntN(2)], "+")
	case 18: // RFC 3966 style
		phone = "tel:+" + cc + "-" + g.spaced(nsn, "-")
	case 19: // a formatted number, then an extension the fast path strips, or one of many it leaves to the library
		base := [...]string{g.format(cc+nsn, phonenumbers.INTERNATIONAL), g.format(cc+nsn, phonenumbers.NATIONAL), "+" + cc + nsn, nsn, "tel:+" + cc + "-" + nsn}[g.rng.IntN(5)]
		digits := strconv.Itoa(1000000000 + g.rng.IntN(1000000000))[1 : 2+g.rng.IntN(9)]
		ext := [...]string{" ext. ", " ext ", " x ", " x", ";ext=", " EXT. ", " Ext ", " X", ",", ",,", ";", " #", "-", " ext.", " extension ", "x", " x  ", "  x"}[g.rng.IntN(18)] + digits
		if g.rng.IntN(8) == 0 {
			ext += [...]string{"#", "0123456789", "5", " ", "x"}[g.rng.IntN(5)]
		}
		phone = base + ext
	case 15: // very short and very long
		phone = [...]string{nsn[:min(len(nsn), 3)], "+" + cc + nsn + nsn, "+" + cc, nsn + nsn + nsn}[g.rng.IntN(4)]
	}
	return phone, region, style
}

// toDigits writes the ASCII digits of s in another script whose zero is
// zero, and '+' as plus.
func toDigits(s string, zero rune, plus string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
			b.WriteRune(zero + r - '0')
		case r == '+':
			b.WriteString(plus)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// format renders "+<digits>" in the library's format, or the digits when
// the library cannot parse them.
func (g *generator) format(digits string, f phonenumbers.PhoneNumberFormat) string {
	n, err := phonenumbers.Parse("+"+digits, "")
	if err != nil {
		return digits
	}
	return phonenumbers.Format(n, f)
}

// diffCount is how many inputs TestDifferential checks: DIFF_N, or a short
// form (shorter still under the race detector, which slows the library 10x).
func diffCount(t *testing.T) int {
	if s := os.Getenv("AUDIENCEMATCH_DIFF_N"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("AUDIENCEMATCH_DIFF_N=%q is not a positive count", s)
		}
		return n
	}
	if raceEnabled || testing.Short() {
		return 20_000
	}
	return 200_000
}

// TestDifferential: over generated inputs of every region, every
// non-geographical entity and every style, each answer the fast path gives
// is the library's; and the fast path answers most well-formed inputs.
func TestDifferential(t *testing.T) {
	n := diffCount(t)
	workers := runtime.GOMAXPROCS(0)
	type tally struct{ total, fast [styles]int }
	tallies := make([]tally, workers)
	var wg sync.WaitGroup
	var failures sync.Map
	for w := range workers {
		wg.Go(func() {
			g := newGenerator(uint64(w) + 1)
			ta := &tallies[w]
			for i := w; i < n; i += workers {
				phone, region, style := g.next()
				ta.total[style]++
				got, res := Normalize(phone, region)
				if res == Fallback {
					continue
				}
				ta.fast[style]++
				want, wres, err := library(phone, region)
				if err != nil || got != want || res != wres {
					failures.Store(fmt.Sprintf("%q, %q", phone, region), fmt.Sprintf("fast %q %v, library %q %v %v", got, res, want, wres, err))
				}
			}
		})
	}
	wg.Wait()
	bad := 0
	failures.Range(func(k, v any) bool {
		if bad++; bad <= 20 {
			t.Errorf("Normalize(%s): %s", k, v)
		}
		return true
	})
	if bad > 0 {
		t.Fatalf("%d inputs differ from the library", bad)
	}
	var sum tally
	for _, ta := range tallies {
		for s := range styles {
			sum.total[s] += ta.total[s]
			sum.fast[s] += ta.fast[s]
		}
	}
	all, fast := 0, 0
	for s := range styles {
		all += sum.total[s]
		fast += sum.fast[s]
		t.Logf("style %2d: %8d inputs, %5.1f%% on the fast path", s, sum.total[s], 100*float64(sum.fast[s])/float64(max(1, sum.total[s])))
	}
	t.Logf("%d inputs identical to the library; %.1f%% decided by the fast path", all, 100*float64(fast)/float64(all))
	// Styles 0-9 and 16-18 are the common shapes: nearly all must be fast.
	// (Some mutated numbers are parse errors, which are left to the library.)
	for _, s := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 18} { // 19: a quarter of its labels are the fast path's
		if share := float64(sum.fast[s]) / float64(max(1, sum.total[s])); sum.total[s] > 1000 && share < 0.85 {
			t.Errorf("style %d: only %.1f%% on the fast path", s, 100*share)
		}
	}
}

func FuzzFastPath(f *testing.F) {
	g := newGenerator(99)
	for range 200 {
		phone, region, _ := g.next()
		f.Add(phone, region)
	}
	f.Fuzz(func(t *testing.T, phone, region string) {
		if len(phone) > 250 {
			return // Normalize's callers refuse these first
		}
		check(t, phone, region)
	})
}

func BenchmarkNormalize(b *testing.B) {
	g := newGenerator(7)
	type in struct{ phone, region string }
	var inputs []in
	for len(inputs) < 1<<14 {
		phone, region, style := g.next()
		if style <= 9 {
			inputs = append(inputs, in{phone, region})
		}
	}
	load()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		x := inputs[i&(len(inputs)-1)]
		Normalize(x.phone, x.region)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "numbers/s")
}
