package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"audiencematch/internal/objstore"
	"audiencematch/pipeline/errkind"
)

// A shard store holds the shards of runs whose shards share no file
// system: SHARD_STORE/<run key>/shard-I-of-N/ holds the files a shard
// leaves under STATE/shards (shard.json last), and the commit copies them
// back under its own STATE/shards before it checks them, every file
// against shard.json, exactly as it checks shards on a shared volume. The
// store adds no trust: what it holds is checked like a local file.

// uploadShard copies the finished shard in dir to the shard store, its
// shard.json removed first and written last, so that the store never
// holds a shard.json beside files of another attempt. It returns the
// shard's location.
func uploadShard(ctx context.Context, cfg *Config, dir, name string) (string, error) {
	s, err := objstore.Open(ctx, cfg.ShardStore)
	if err != nil {
		return "", err
	}
	defer s.Close()
	rel := runKey(cfg) + "/" + name
	loc := objstore.Join(cfg.ShardStore, rel)
	if err := s.Delete(ctx, s.Key(rel+"/shard.json")); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return "", objstore.Err(err, "remove", loc+"/shard.json")
	}
	var files []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		r, _ := filepath.Rel(dir, p)
		if r != "shard.json" {
			files = append(files, filepath.ToSlash(r))
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	slices.Sort(files)
	for _, f := range append(files, "shard.json") {
		fh, err := os.Open(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			return "", err
		}
		err = s.Upload(ctx, s.Key(rel+"/"+f), fh, &blob.WriterOptions{ContentType: "application/octet-stream"})
		fh.Close()
		if err != nil {
			return "", objstore.Err(err, "write", objstore.Join(cfg.ShardStore, rel+"/"+f))
		}
	}
	return loc, nil
}

// fetchShards copies into set the shards of the run that the store holds
// whole (with their shard.json) and set does not; a shard the store does
// not hold whole is left missing, for the commit to report.
func fetchShards(ctx context.Context, cfg *Config, set string, count int) error {
	s, err := objstore.Open(ctx, cfg.ShardStore)
	if err != nil {
		return err
	}
	defer s.Close()
	for i := range count {
		name := shardName(i, count)
		local := filepath.Join(set, name)
		if _, err := os.Stat(filepath.Join(local, "shard.json")); err == nil {
			continue
		}
		rel := runKey(cfg) + "/" + name
		ok, err := s.Exists(ctx, s.Key(rel+"/shard.json"))
		if err != nil {
			return objstore.Err(err, "read", objstore.Join(cfg.ShardStore, rel+"/shard.json"))
		}
		if !ok {
			continue
		}
		if err := os.RemoveAll(local); err != nil {
			return err
		}
		tmp := filepath.Join(set, ".fetch-"+name)
		if err := os.RemoveAll(tmp); err != nil {
			return err
		}
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
		}
		if err := objstore.Fetch(ctx, objstore.Join(cfg.ShardStore, rel), tmp); err != nil {
			os.RemoveAll(tmp)
			return fmt.Errorf("shard %d/%d: %w", i, count, err)
		}
		if err := os.Rename(tmp, local); err != nil {
			return err
		}
	}
	return nil
}

// removeStoredShards removes a committed run's shards from the store.
func removeStoredShards(ctx context.Context, cfg *Config) error {
	if cfg.ShardStore == "" {
		return nil
	}
	s, err := objstore.Open(ctx, cfg.ShardStore)
	if err != nil {
		return err
	}
	defer s.Close()
	keys, err := s.List(ctx, s.Key(runKey(cfg)))
	if err != nil {
		return err
	}
	var errs []error
	for _, k := range keys {
		errs = append(errs, s.Delete(ctx, s.Key(runKey(cfg)+"/"+k)))
	}
	return errors.Join(errs...)
}
