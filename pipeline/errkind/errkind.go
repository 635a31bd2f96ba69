// Package errkind names the kinds of failure a run can end in. Every error
// the pipeline and its parts return wraps at most one of them; the CLI maps
// each to its exit code (sysexits.h) in one switch, so callers match with
// errors.Is and never parse messages. It imports nothing of the project, so
// that every package can report its failures in these terms.
package errkind

import "errors"

// The kinds, with the exit code each maps to.
var (
	ErrUsage    = errors.New("usage error")                    // 64
	ErrData     = errors.New("bad input data")                 // 65
	ErrNoInput  = errors.New("input missing or unreadable")    // 66
	ErrTempFail = errors.New("temporary failure, retry later") // 75
	ErrConfig   = errors.New("configuration error")            // 78
	ErrRejected = errors.New("destination refused")            // 77
)
