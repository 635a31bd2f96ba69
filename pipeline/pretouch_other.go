//go:build !linux

package pipeline

import "errors"

// Pretouch is a no-op but on Linux (see pretouch_linux.go).
func Pretouch(n int64) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	return 0, errors.New("pretouch needs Linux's MADV_POPULATE_WRITE")
}
