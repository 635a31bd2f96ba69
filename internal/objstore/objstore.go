// Package objstore reaches files kept in object storage (S3 and what
// speaks its protocol, Google Cloud Storage, Azure Blob Storage) through
// gocloud.dev/blob, for the inputs, the delivery and the shards.
//
// # Locations
//
// A location is a local absolute path or a URL whose scheme picks the
// store: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, azblob://CONTAINER/PREFIX,
// or file:///PATH (a local path). The query is the driver's settings, kept
// apart from the key, so that a file's location is its directory's
// location with the file's path inserted before the query:
//
//	s3://exports/am?region=us-east-1  +  meta-ads/_LATEST
//	  = s3://exports/am/meta-ads/_LATEST?region=us-east-1
//
// Credentials never appear in a location: each cloud SDK reads them from
// its usual environment and files (AWS_ACCESS_KEY_ID and ~/.aws for S3,
// GOOGLE_APPLICATION_CREDENTIALS for GCS, AZURE_STORAGE_ACCOUNT and its
// key or a managed identity for Azure). Location strings are therefore
// fit for logs and the audit log; Redact drops the query all the same for
// names that reach the destination (an endpoint names internal hosts).
//
// # Writing
//
// An object store has no rename, so nothing appears at once: Put writes an
// object only if none exists under its key (If-None-Match: *), and sends
// its SHA-256 for the store to check where the protocol allows (S3's
// x-amz-checksum-sha256; a store that finds another digest refuses the
// object); where it does not, the object is read back and its digest
// compared. An object already there with the same digest is what an
// interrupted attempt at the same write left (the outputs of a run are a
// function of its inputs): Put accepts it. Another digest is a conflict,
// never overwritten.
//
// # Errors
//
// A store's refusal of the credentials is an errkind.ErrConfig error (78:
// fix the setup), a missing object errkind.ErrNoInput (66), and a store
// that cannot be reached or fails errkind.ErrTempFail (75: retry).
package objstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
	"gocloud.dev/gcerrors"

	"audiencematch/pipeline/errkind"
)

// Schemes are the URL schemes of object stores.
var Schemes = []string{"s3", "gs", "azblob"}

// IsURL reports whether loc is an object-store URL (not a local path, nor a
// file:// URL, which is one).
func IsURL(loc string) bool {
	scheme, _, ok := strings.Cut(loc, "://")
	if !ok {
		return false
	}
	for _, s := range Schemes {
		if scheme == s {
			return true
		}
	}
	return false
}

// LocalPath returns the path of a file:// URL, or loc itself when it has
// no scheme; ok is false for an object-store URL or another scheme.
func LocalPath(loc string) (p string, ok bool) {
	if rest, found := strings.CutPrefix(loc, "file://"); found {
		u, err := url.Parse("file://" + rest)
		if err != nil || u.Path == "" || (u.Host != "" && u.Host != "localhost") {
			return "", false
		}
		return filepath.FromSlash(u.Path), true
	}
	if strings.Contains(loc, "://") {
		return "", false
	}
	return loc, true
}

// Split cuts an object-store URL into its bucket's URL (scheme, bucket and
// the driver's query) and the key prefix.
func Split(loc string) (bucketURL, key string, err error) {
	u, err := url.Parse(loc)
	if err != nil || !IsURL(loc) || u.Host == "" {
		return "", "", fmt.Errorf("%w: %q is not an object-store URL: use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or azblob://CONTAINER/PREFIX", errkind.ErrConfig, Redact(loc))
	}
	if u.User != nil {
		return "", "", fmt.Errorf("%w: %s holds credentials: leave them to the cloud SDK's environment and files", errkind.ErrConfig, Redact(loc))
	}
	b := url.URL{Scheme: u.Scheme, Host: u.Host, RawQuery: u.RawQuery}
	return b.String(), strings.Trim(u.Path, "/"), nil
}

// Join is the location of rel (slash-separated) under loc, a path or a
// URL: in a URL, rel goes into the path, before the query.
func Join(loc, rel string) string {
	if !strings.Contains(loc, "://") {
		return filepath.Join(loc, filepath.FromSlash(rel))
	}
	u, err := url.Parse(loc)
	if err != nil {
		return loc + "/" + rel
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + strings.TrimPrefix(rel, "/")
	return u.String()
}

// Redact is loc without its query and user information, for what a
// destination or a log receives.
func Redact(loc string) string {
	u, err := url.Parse(loc)
	if err != nil || u.Scheme == "" {
		if i := strings.IndexAny(loc, "?#"); i >= 0 {
			return loc[:i]
		}
		return loc
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

// Store is an open bucket and a key prefix in it: a location's "directory".
type Store struct {
	*blob.Bucket
	// Prefix is the location's key prefix, without a slash at either end.
	Prefix string
	// Loc is the location opened.
	Loc  string
	name string // the bucket's name
}

// Open opens the bucket of an object-store URL; Close closes it.
func Open(ctx context.Context, loc string) (*Store, error) {
	bu, key, err := Split(loc)
	if err != nil {
		return nil, err
	}
	b, err := blob.OpenBucket(ctx, bu)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", errkind.ErrConfig, Redact(loc), err)
	}
	u, _ := url.Parse(bu)
	return &Store{Bucket: b, Prefix: key, Loc: loc, name: u.Host}, nil
}

// Key is the key of rel (slash-separated) under the store's prefix.
func (s *Store) Key(rel string) string {
	if s.Prefix == "" {
		return rel
	}
	return s.Prefix + "/" + rel
}

// Err gives a store's error its kind (see the package doc), naming what
// was done and where.
func Err(err error, what, loc string) error {
	if err == nil {
		return nil
	}
	kind := errkind.ErrTempFail
	hint := "the store did not answer as expected; retry"
	code := gcerrors.Code(err)
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case 403:
			code = gcerrors.PermissionDenied
		case 404:
			code = gcerrors.NotFound
		case 400:
			code = gcerrors.InvalidArgument
		}
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch":
			return fmt.Errorf("%w: %s %s: the store computed another SHA-256 than the one sent (the data changed on the way): nothing was stored; retry: %w", errkind.ErrTempFail, what, Redact(loc), err)
		}
	}
	switch code {
	case gcerrors.NotFound:
		kind, hint = errkind.ErrNoInput, "no such object or bucket"
	case gcerrors.PermissionDenied:
		kind, hint = errkind.ErrConfig, "the store refused the credentials: check the cloud SDK's credentials (for S3, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws) and the bucket's policy"
	case gcerrors.InvalidArgument:
		kind, hint = errkind.ErrConfig, "the store refused the request: check the URL's bucket and settings"
	case gcerrors.Canceled:
		return fmt.Errorf("%s %s: %w", what, Redact(loc), err)
	}
	return fmt.Errorf("%w: %s %s: %s: %w", kind, what, Redact(loc), hint, err)
}

// ErrConflict means an object is already stored under a key with content
// other than the one being written: another writer's, never overwritten.
var ErrConflict = errors.New("another object is already stored under this key")

// Put stores the local file src as the object key of b, create-only, with
// its SHA-256 digest (hex) checked by the store or by reading it back. An
// object already stored under key with the same digest is accepted (see
// the package doc); one with another digest is ErrConflict.
func (s *Store) Put(ctx context.Context, key, src, digest string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	err = s.create(ctx, key, f, digest)
	if exists(err) {
		have, derr := s.Digest(ctx, key)
		if derr != nil {
			return derr
		}
		if have != digest {
			return fmt.Errorf("%w: %s (SHA-256 %s, this run's %s)", ErrConflict, key, have, digest)
		}
		return nil
	}
	return err
}

// PutBytes is Put for a small object held in memory.
func (s *Store) PutBytes(ctx context.Context, key string, data []byte) error {
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	err := s.create(ctx, key, bytes.NewReader(data), digest)
	if exists(err) {
		have, derr := s.Digest(ctx, key)
		if derr != nil {
			return derr
		}
		if have != digest {
			return fmt.Errorf("%w: %s", ErrConflict, key)
		}
		return nil
	}
	return err
}

// create writes body as key if no object is there. On S3 it is one PUT
// that carries the SHA-256 for the store to check (a store that computes
// another refuses the object); elsewhere the object is read back.
func (s *Store) create(ctx context.Context, key string, body io.ReadSeeker, digest string) error {
	var client *s3.Client
	if s.As(&client) {
		raw, _ := hex.DecodeString(digest)
		_, err := client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:            aws.String(s.name),
			Key:               aws.String(key),
			Body:              body,
			IfNoneMatch:       aws.String("*"),
			ChecksumAlgorithm: s3types.ChecksumAlgorithmSha256,
			ChecksumSHA256:    aws.String(base64.StdEncoding.EncodeToString(raw)),
			ContentType:       aws.String("application/octet-stream"),
		})
		return err
	}
	w, err := s.NewWriter(ctx, key, &blob.WriterOptions{IfNotExist: true, ContentType: "application/octet-stream"})
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	have, err := s.Digest(ctx, key)
	if err != nil {
		return err
	}
	if have != digest {
		return fmt.Errorf("%s: stored with SHA-256 %s, sent %s: the store changed it in transit", key, have, digest)
	}
	return nil
}

// Digest is the hex SHA-256 of the object key, read whole.
func (s *Store) Digest(ctx context.Context, key string) (string, error) {
	r, err := s.NewReader(ctx, key, nil)
	if err != nil {
		return "", err
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// List returns the keys under prefix (a "directory": prefix/...), every
// level, relative to it, in lexical order.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	p := prefix
	if p != "" {
		p += "/"
	}
	it := s.Bucket.List(&blob.ListOptions{Prefix: p})
	var keys []string
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			return keys, nil
		}
		if err != nil {
			return nil, err
		}
		if !o.IsDir {
			keys = append(keys, strings.TrimPrefix(o.Key, p))
		}
	}
}

// Fetch copies every object under the location loc (a URL) into the local
// directory dst, keeping their relative paths. It is how the readers of
// local files (audit verify, the heal's checks) read a published run.
func Fetch(ctx context.Context, loc, dst string) error {
	s, err := Open(ctx, loc)
	if err != nil {
		return err
	}
	defer s.Close()
	keys, err := s.List(ctx, s.Prefix)
	if err != nil {
		return Err(err, "list", loc)
	}
	for _, k := range keys {
		if strings.Contains("/"+k+"/", "/../") {
			return fmt.Errorf("%w: %s holds the key %q, which escapes it", errkind.ErrData, Redact(loc), k)
		}
		to := filepath.Join(dst, filepath.FromSlash(k))
		if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		err = s.Download(ctx, s.Key(k), f, nil)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return Err(err, "read", Join(loc, k))
		}
	}
	return nil
}

// exists reports whether a create-only write failed because an object is
// already stored under its key.
func exists(err error) bool {
	if err == nil {
		return false
	}
	if c := gcerrors.Code(err); c == gcerrors.FailedPrecondition || c == gcerrors.AlreadyExists {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "PreconditionFailed" || ae.ErrorCode() == "ConditionalRequestConflict") {
		return true
	}
	var re *awshttp.ResponseError
	return errors.As(err, &re) && re.HTTPStatusCode() == 412
}
