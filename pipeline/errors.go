package pipeline

import "errors"

// Error kinds. Every error a run returns wraps at most one of them; the CLI
// maps each to its exit code (sysexits.h), so callers match, never parse.
var (
	ErrUsage       = errors.New("usage error")                    // 64
	ErrData        = errors.New("bad input data")                 // 65
	ErrNoInput     = errors.New("input missing or unreadable")    // 66
	ErrUnavailable = errors.New("service unavailable")            // 69
	ErrTempFail    = errors.New("temporary failure, retry later") // 75
	ErrConfig      = errors.New("configuration error")            // 78
	ErrRejected    = errors.New("destination refused")            // 77
)
