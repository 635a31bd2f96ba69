package e164

import (
	"encoding/binary"
	"fmt"
	"math"
	"regexp/syntax"
	"slices"
)

// dfa is a deterministic automaton over the ASCII digits '0'-'9', compiled
// from one of libphonenumber's metadata patterns. It answers the two
// questions the library asks of those patterns, on digit-only input:
//   - full: does the whole string match "^(?:p)$"?
//   - prefixes: which prefixes of the string match (that is, where can a
//     match of "^(?:p)" end)?
//
// Both are questions about the language of p, not about a regexp engine's
// preferences among alternatives, so an automaton gives exactly the
// answers Go's regexp package gives. Where the library needs the end of a
// leftmost-first match and more than one prefix matches, the caller goes
// back to the regexp.
type dfa struct {
	next   []int16 // next[state*10+digit]; -1 is the dead state (maxStates fits)
	accept []bool  // a match ends here
	atEnd  []bool  // a match ends here if this is the end of the input ('$')
}

// maxStates bounds the subset construction; a pattern needing more is
// reported as unsupported and its region is left to the library.
const maxStates = 1 << 15

// A state is an int16 in next (half the cache lines of an int32 there,
// which matters where the join's partitions crowd the processor's caches;
// docs/PERFORMANCE.md): every state must fit.
const _ uint = math.MaxInt16 - (maxStates - 1)

// compileDFA parses p with the flags regexp.Compile uses (syntax.Perl) and
// builds its automaton by subset construction over the compiled program.
func compileDFA(p string) (*dfa, error) {
	re, err := syntax.Parse(p, syntax.Perl)
	if err != nil {
		return nil, err
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, err
	}
	b := &builder{prog: prog, ids: map[string]int32{}, mark: make([]uint32, len(prog.Inst))}
	start, err := b.closure([]uint32{uint32(prog.Start)}, true, nil)
	if err != nil {
		return nil, err
	}
	b.add(start)
	var step, set []uint32 // scratch: add keeps a copy of a new set
	for s := 0; s < len(b.sets); s++ {
		for d := range 10 {
			step = step[:0]
			for _, pc := range b.sets[s] {
				in := &prog.Inst[pc]
				if consumes(in.Op) && in.MatchRune(rune('0'+d)) {
					step = append(step, in.Out)
				}
			}
			if len(step) == 0 {
				b.d.next[s*10+d] = -1
				continue
			}
			if set, err = b.closure(step, false, set); err != nil {
				return nil, err
			}
			id, err := b.add(set)
			if err != nil {
				return nil, err
			}
			b.d.next[s*10+d] = int16(id)
		}
	}
	return &b.d, nil
}

// builder builds one automaton. Its scratch space (mark, gen, stack, key)
// is reused from one closure or state to the next: building every region's
// automata once made a million allocations before.
type builder struct {
	prog  *syntax.Prog
	sets  [][]uint32
	ids   map[string]int32
	d     dfa
	mark  []uint32 // mark[pc] == gen: pc seen by the current closure
	gen   uint32
	stack []uint32
	key   []byte
}

func consumes(op syntax.InstOp) bool {
	switch op {
	case syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
		return true
	}
	return false
}

// closure follows the empty transitions from pcs and returns, in out's
// memory, the sorted set of consuming and matching instructions reached,
// and of the end-of-text assertions (kept as markers: what follows one can
// only match at the end of the input). A beginning-of-text assertion is
// passed only at the start.
func (b *builder) closure(pcs []uint32, atStart bool, out []uint32) ([]uint32, error) {
	out = out[:0]
	b.gen++
	stack := append(b.stack[:0], pcs...)
	defer func() { b.stack = stack }()
	for len(stack) > 0 {
		pc := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if b.mark[pc] == b.gen {
			continue
		}
		b.mark[pc] = b.gen
		in := &b.prog.Inst[pc]
		switch in.Op {
		case syntax.InstAlt, syntax.InstAltMatch:
			stack = append(stack, in.Out, in.Arg)
		case syntax.InstCapture, syntax.InstNop:
			stack = append(stack, in.Out)
		case syntax.InstFail:
		case syntax.InstMatch, syntax.InstRune, syntax.InstRune1, syntax.InstRuneAny, syntax.InstRuneAnyNotNL:
			out = append(out, pc)
		case syntax.InstEmptyWidth:
			switch syntax.EmptyOp(in.Arg) {
			case syntax.EmptyEndText:
				out = append(out, pc)
			case syntax.EmptyBeginText:
				if atStart {
					stack = append(stack, in.Out)
				}
			default: // line anchors and word boundaries are not modelled
				return nil, fmt.Errorf("unsupported assertion %v", syntax.EmptyOp(in.Arg))
			}
		default:
			return nil, fmt.Errorf("unsupported instruction %v", in.Op)
		}
	}
	slices.Sort(out)
	return out, nil
}

// add returns the state of set, a new one if set is new (add keeps a copy:
// set's memory is the caller's).
func (b *builder) add(set []uint32) (int32, error) {
	b.key = b.key[:0]
	for _, pc := range set {
		b.key = binary.AppendUvarint(b.key, uint64(pc))
	}
	if id, ok := b.ids[string(b.key)]; ok {
		return id, nil
	}
	if len(b.sets) >= maxStates {
		return 0, fmt.Errorf("more than %d states", maxStates)
	}
	id := int32(len(b.sets))
	b.ids[string(b.key)] = id
	b.sets = append(b.sets, slices.Clone(set))
	accept, atEnd := false, false
	for _, pc := range set {
		switch in := &b.prog.Inst[pc]; in.Op {
		case syntax.InstMatch:
			accept = true
		case syntax.InstEmptyWidth:
			m, err := b.matchesAtEnd(in.Out)
			if err != nil {
				return 0, err
			}
			atEnd = atEnd || m
		}
	}
	b.d.accept = append(b.d.accept, accept)
	b.d.atEnd = append(b.d.atEnd, atEnd || accept)
	b.d.next = append(b.d.next, make([]int16, 10)...)
	return id, nil
}

// matchesAtEnd reports whether a match is reached from pc without
// consuming input, at the end of the input.
func (b *builder) matchesAtEnd(pc uint32) (bool, error) {
	set, err := b.closure([]uint32{pc}, false, nil) // its own memory: the recursion below needs it
	if err != nil {
		return false, err
	}
	for _, q := range set {
		switch in := &b.prog.Inst[q]; in.Op {
		case syntax.InstMatch:
			return true, nil
		case syntax.InstEmptyWidth:
			if q != pc {
				if m, err := b.matchesAtEnd(in.Out); err != nil || m {
					return m, err
				}
			}
		}
	}
	return false, nil
}

// full reports whether the digit string s is in the pattern's language.
func (d *dfa) full(s []byte) bool {
	st := 0
	for _, c := range s {
		if st = int(d.next[st*10+int(c-'0')]); st < 0 {
			return false
		}
	}
	return d.atEnd[st]
}

// prefixes returns a bit set of the lengths k (0 <= k <= len(s) < 64) for
// which s[:k] is in the pattern's language.
func (d *dfa) prefixes(s []byte) uint64 {
	var m uint64
	st := 0
	for i := 0; ; i++ {
		if d.accept[st] || (i == len(s) && d.atEnd[st]) {
			m |= 1 << i
		}
		if i == len(s) {
			return m
		}
		if st = int(d.next[st*10+int(s[i]-'0')]); st < 0 {
			return m
		}
	}
}
