// Package fsutil holds the durable file operations every writer shares:
// write to a temp file beside the target, sync, close, rename, sync the
// directory.
package fsutil

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// WriteFileDurable writes data to a temp file beside path, syncs, renames it
// into place and syncs the directory.
func WriteFileDurable(path string, data []byte, perm os.FileMode) error {
	return WriteDurable(path, perm, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteDurable is WriteFileDurable for a file written by fn, through a
// buffer: nothing of it is at path until fn, the sync and the rename have
// all succeeded.
func WriteDurable(path string, perm os.FileMode, fn func(io.Writer) error) error {
	return writeDurable(path, perm, fn, os.Rename)
}

// CreateDurable is WriteDurable for a file that must not replace one: it
// links the finished temp file to path, and fails with an error wrapping
// fs.ErrExist when path exists.
func CreateDurable(path string, perm os.FileMode, fn func(io.Writer) error) error {
	return writeDurable(path, perm, fn, os.Link)
}

func writeDurable(path string, perm os.FileMode, fn func(io.Writer) error, place func(tmp, path string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after a rename; the temp name after a link
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = fn(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err := errors.Join(err, f.Close()); err != nil {
		return err
	}
	if err := place(tmp, path); err != nil {
		return err
	}
	return SyncDir(dir)
}

// AppendDurable appends data to path (created with perm if missing) and
// syncs the file and its directory before returning.
func AppendDurable(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, perm)
	if err != nil {
		return err
	}
	if err := writeSyncClose(f, data); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// writeSyncClose writes data, syncs and closes f, closing it on every path.
func writeSyncClose(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// SyncDir fsyncs a directory, so that a rename or a new file in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// PublishDir moves the finished directory src to dst with one rename. When
// src and dst are on different file systems it first copies src to a hidden
// sibling of dst (".tmp-…", which Spark, DuckDB and BigQuery globs skip), then
// renames that, so dst still appears whole or not at all.
func PublishDir(src, dst string) error {
	parent := filepath.Dir(dst)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	if err := os.Rename(src, dst); err == nil {
		return SyncDir(parent)
	} else if !errors.Is(err, syscall.EXDEV) {
		return err
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-"+filepath.Base(dst)+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := CopyDir(src, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return SyncDir(parent)
}

// CopyDir copies the tree under src into the existing directory dst: regular
// files and directories (a published run holds adds/ and removes/), each
// synced, directories with src's permissions. Anything else (a symlink, a
// device) is refused: a run never writes one, so its presence means the
// staging was tampered with.
func CopyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		switch {
		case e.Type().IsRegular():
			err = CopyFile(from, to)
		case e.IsDir():
			err = copySubdir(from, to)
		default:
			err = fmt.Errorf("copy %q: neither a regular file nor a directory", from)
		}
		if err != nil {
			return err
		}
	}
	return SyncDir(dst)
}

func copySubdir(src, dst string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, st.Mode().Perm()); err != nil {
		return err
	}
	return CopyDir(src, dst)
}

// CopyFile copies src to the new file dst (it must not exist) and syncs it.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
