package witness

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/internal/fsutil"
)

// ConfigVersion is the first key of the witnesses file.
const ConfigVersion = "audiencematch.witnesses/v1"

// ConfigFile is the witnesses file under the state directory:
//
//	version: audiencematch.witnesses/v1
//	witnesses:
//	  - name: witness.example.org/w1          # as on its cosignature lines
//	    url: https://witness.example.org/w1   # <url>/add-checkpoint is POSTed to
//	    key: witness.example.org/w1+6b1e7f58+BHn…   # its cosignature/v1 verifier key
const ConfigFile = "witnesses.yaml"

// Witness is one configured witness.
type Witness struct {
	Name     string `yaml:"name"`
	URL      string `yaml:"url"`
	Key      string `yaml:"key"`
	verifier *CosignatureVerifier
}

// Verifier is the witness's cosignature verifier.
func (w *Witness) Verifier() *CosignatureVerifier { return w.verifier }

// Config is the parsed witnesses file.
type Config struct {
	Version   string    `yaml:"version"`
	Witnesses []Witness `yaml:"witnesses"`
}

// LoadConfig reads the witnesses file under state; no file means no
// witnesses. Unknown keys, a key that is not a cosignature/v1 key, or a
// name that is not the key's are errors: a typo must not silently leave the
// log unwitnessed.
func LoadConfig(state string) ([]Witness, error) {
	path := filepath.Join(state, ConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.Version != ConfigVersion {
		return nil, fmt.Errorf("%s: version %q: want %q", path, c.Version, ConfigVersion)
	}
	seen := map[string]bool{}
	for i := range c.Witnesses {
		w := &c.Witnesses[i]
		v, err := NewCosignatureVerifier(w.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: witness %d: %w", path, i+1, err)
		}
		switch {
		case w.Name != v.Name():
			return nil, fmt.Errorf("%s: witness %d: name %q is not its key's name %q", path, i+1, w.Name, v.Name())
		case !strings.HasPrefix(w.URL, "http://") && !strings.HasPrefix(w.URL, "https://"):
			return nil, fmt.Errorf("%s: witness %q: url must be http:// or https://", path, w.Name)
		case seen[w.Name]:
			return nil, fmt.Errorf("%s: witness %q appears twice", path, w.Name)
		}
		seen[w.Name] = true
		w.verifier = v
	}
	return c.Witnesses, nil
}

// Outcome is what one witness did with the current checkpoint.
type Outcome struct {
	Witness string
	// Already: the checkpoint already carried its cosignature.
	Already, Cosigned bool
	Err               error // why it did not cosign (down, refused)
}

// ConflictError is a 409 answer: the witness knows the log at another size.
type ConflictError struct{ Known int64 }

func (e *ConflictError) Error() string {
	return fmt.Sprintf("the witness knows the log at size %d", e.Known)
}

// StatusError is any other answer than 200 or 409.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string {
	what := map[int]string{
		http.StatusForbidden:           "it does not know this log or its key",
		http.StatusUnprocessableEntity: "the consistency proof does not verify: the log is not an extension of what it cosigned (a rollback or a fork)",
		http.StatusBadRequest:          "it could not read the request",
	}[e.Code]
	return fmt.Sprintf("HTTP %d %s: %s", e.Code, strings.TrimSpace(e.Body), what)
}

// AddCheckpoint sends one add-checkpoint request and returns the
// cosignature lines of a 200 answer.
func AddCheckpoint(ctx context.Context, client *http.Client, url string, old int64, proof [][]byte, signedNote []byte) ([]byte, error) {
	var body bytes.Buffer
	fmt.Fprintf(&body, "old %d\n", old)
	for _, h := range proof {
		fmt.Fprintf(&body, "%s\n", base64.StdEncoding.EncodeToString(h))
	}
	body.WriteString("\n")
	body.Write(signedNote)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(url, "/")+"/add-checkpoint", &body)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return b, nil
	case http.StatusConflict:
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || n < 0 {
			return nil, &StatusError{Code: resp.StatusCode, Body: "unreadable known size"}
		}
		return nil, &ConflictError{Known: n}
	}
	return nil, &StatusError{Code: resp.StatusCode, Body: string(b)}
}

// Cosign asks every witness whose cosignature the checkpoint under the
// audit directory lacks to cosign it, and adds the cosignatures it gets to
// the checkpoint file. It runs under the run lock, on a log that matches
// its checkpoint (l, read after audit.Recover). A witness that is down or
// refuses is reported in its Outcome; the error is for the checkpoint file
// itself.
func Cosign(ctx context.Context, dir string, l *audit.Log, logVerifier note.Verifier, ws []Witness, client *http.Client) ([]Outcome, error) {
	if len(ws) == 0 {
		return nil, nil
	}
	path := filepath.Join(dir, audit.CheckpointFile)
	cpBytes, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cp, err := audit.ParseCheckpoint(cpBytes, logVerifier)
	if err != nil {
		return nil, err
	}
	if int64(cp.Size) != l.Size() {
		return nil, fmt.Errorf("the checkpoint covers %d records, the log holds %d", cp.Size, l.Size())
	}
	have, err := Cosigners(cpBytes, logVerifier, ws)
	if err != nil {
		return nil, err
	}
	signedNote, err := logSigned(cpBytes, logVerifier)
	if err != nil {
		return nil, err
	}
	text := signedNote[:bytes.Index(signedNote, []byte("\n\n"))+1]
	var added []byte
	out := make([]Outcome, len(ws))
	for i := range ws {
		w := &ws[i]
		out[i].Witness = w.Name
		if _, ok := have[w.Name]; ok {
			out[i].Already = true
			continue
		}
		lines, err := ask(ctx, client, w, l, int64(cp.Size), signedNote)
		if err == nil {
			err = checkCosignature(text, lines, w.verifier)
		}
		if err != nil {
			out[i].Err = err
			continue
		}
		out[i].Cosigned = true
		added = append(added, lines...)
	}
	if len(added) > 0 {
		if err := fsutil.WriteFileDurable(path, append(cpBytes, added...), 0o644); err != nil {
			return out, err
		}
	}
	return out, nil
}

// ask sends the checkpoint to w, starting from "old 0" and, on a 409, once
// more from the size the witness knows, with the consistency proof.
func ask(ctx context.Context, client *http.Client, w *Witness, l *audit.Log, size int64, signedNote []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	lines, err := AddCheckpoint(ctx, client, w.URL, 0, nil, signedNote)
	var conflict *ConflictError
	if !errors.As(err, &conflict) {
		return lines, err
	}
	if conflict.Known > size {
		return nil, fmt.Errorf("%w, more than the %d records of the log: it refuses this history (a rollback)", err, size)
	}
	proof, err := l.ProveTree(size, conflict.Known)
	if err != nil {
		return nil, err
	}
	hashes := make([][]byte, len(proof))
	for i := range proof {
		hashes[i] = proof[i][:]
	}
	return AddCheckpoint(ctx, client, w.URL, conflict.Known, hashes, signedNote)
}

// checkCosignature checks that lines are signature lines of which one is
// w's valid cosignature of text.
func checkCosignature(text, lines []byte, v *CosignatureVerifier) error {
	if len(lines) == 0 || lines[len(lines)-1] != '\n' {
		return errors.New("the witness's answer is not signature lines")
	}
	n, err := note.Open(append(append(append([]byte{}, text...), '\n'), lines...), note.VerifierList(v))
	if err != nil {
		return fmt.Errorf("the witness's cosignature does not verify under its configured key: %w", err)
	}
	if len(n.UnverifiedSigs) > 0 {
		return errors.New("the witness answered signatures other than its own")
	}
	return nil
}

// logSigned is the checkpoint note with only the log's own signature: what
// a witness is sent.
func logSigned(cpBytes []byte, logVerifier note.Verifier) ([]byte, error) {
	n, err := note.Open(cpBytes, note.VerifierList(logVerifier))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(n.Text)
	b.WriteString("\n")
	for _, s := range n.Sigs {
		fmt.Fprintf(&b, "— %s %s\n", s.Name, s.Base64)
	}
	return b.Bytes(), nil
}

// Cosigners returns, by witness name, the UNIX time of each of ws's valid
// cosignatures on the checkpoint cpBytes; the log's signature must verify
// too. A cosignature line that claims a configured witness's key but does
// not verify is an error.
func Cosigners(cpBytes []byte, logVerifier note.Verifier, ws []Witness) (map[string]uint64, error) {
	vs := []note.Verifier{logVerifier}
	for i := range ws {
		vs = append(vs, ws[i].verifier)
	}
	return CosignersOf(cpBytes, vs...)
}

// CosignersOf is Cosigners for verifiers: the log's first, then the
// witnesses'.
func CosignersOf(cpBytes []byte, verifiers ...note.Verifier) (map[string]uint64, error) {
	n, err := note.Open(cpBytes, note.VerifierList(verifiers...))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, s := range n.Sigs {
		if s.Name == verifiers[0].Name() && s.Hash == verifiers[0].KeyHash() {
			continue
		}
		t, err := Timestamp(s.Base64)
		if err != nil {
			return nil, err
		}
		out[s.Name] = t
	}
	return out, nil
}
