package check

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deploy is scripts/deploy, the directory above this module.
const deploy = ".."

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deploy, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSystemdUnit: systemd-analyze verify accepts the unit and the timer,
// security rates the unit OK, and it has the hardening the issue asks for.
func TestSystemdUnit(t *testing.T) {
	unit := read(t, "audiencematch.service")
	for _, want := range []string{"\nType=exec\n", "\nRuntimeMaxSec=", "\nUser=audiencematch\n", "\nProtectSystem=strict\n", "\nPrivateTmp=yes\n",
		"\nNoNewPrivileges=yes\n", "\nRestart=no\n", "\nRestartForceExitStatus=75\n", "\nStartLimitBurst="} {
		if !strings.Contains(unit, want) {
			t.Errorf("the unit lacks %q", strings.TrimSpace(want))
		}
	}
	for _, l := range regexp.MustCompile(`(?m)^Restart\w*=.*$`).FindAllString(unit, -1) {
		if !slices.Contains([]string{"Restart=no", "RestartForceExitStatus=75", "RestartSec=15min"}, l) {
			t.Errorf("the unit retries more than exit 75: %s", l)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: the unit's directives are checked, not the unit")
	}
	dir := t.TempDir()
	// verify checks that ExecStart's program exists: the unit as shipped,
	// pointing at a program that does.
	os.WriteFile(filepath.Join(dir, "audiencematch.service"), []byte(strings.ReplaceAll(unit, "/usr/local/bin/audiencematch", "/bin/true")), 0o644)
	os.WriteFile(filepath.Join(dir, "audiencematch.timer"), []byte(read(t, "audiencematch.timer")), 0o644)
	cmd := exec.Command("systemd-analyze", "verify", "./audiencematch.service", "./audiencematch.timer")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	cmd = exec.Command("systemd-analyze", "security", "--offline=true", "./audiencematch.service")
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for audiencematch.service: ([0-9.]+) (\w+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2.0 {
		t.Errorf("systemd-analyze security rates the unit %s %s; want 2.0 or less", m[1], m[2])
	}
	t.Logf("systemd-analyze security: %s %s", m[1], m[2])
}

// TestCrontab: the file is one Debian's cron reads (five fields, a user,
// no CRON_TZ, no %), and its command retries exit 75 and nothing else.
func TestCrontab(t *testing.T) {
	var jobs []string
	for _, l := range strings.Split(read(t, "crontab"), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case regexp.MustCompile(`^[A-Z_]+=`).MatchString(l):
			if name, _, _ := strings.Cut(l, "="); !slices.Contains([]string{"SHELL", "PATH", "MAILTO"}, name) {
				t.Errorf("%s: Debian's cron ignores it (or passes it on without meaning)", name)
			}
		default:
			jobs = append(jobs, l)
		}
	}
	if len(jobs) != 1 {
		t.Fatalf("%d jobs", len(jobs))
	}
	f := strings.Fields(jobs[0])
	field := regexp.MustCompile(`^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`)
	for _, x := range f[:5] {
		if !field.MatchString(x) {
			t.Errorf("schedule field %q", x)
		}
	}
	if f[5] != "audiencematch" {
		t.Errorf("user %q", f[5])
	}
	if strings.Contains(jobs[0], "%") {
		t.Error("cron turns % into a new line")
	}
	command := strings.Join(strings.SplitN(jobs[0], " ", 7)[6:], "")
	// Run the command as cron would (SHELL=/bin/bash), with the binary, sleep
	// and logger replaced by stubs: the binary exits with the codes given,
	// one per call.
	for _, c := range []struct {
		codes []int
		calls int
		mail  string
	}{
		{[]int{0}, 1, ""},
		{[]int{75, 75, 0}, 3, ""},
		{[]int{75, 65}, 2, "exit 65 after 2 tries"},
		{[]int{78}, 1, "exit 78 after 1 tries"},
		{[]int{75, 75, 75, 75, 0}, 4, "exit 75 after 4 tries"},
	} {
		dir := t.TempDir()
		var codes []string
		for _, c := range c.codes {
			codes = append(codes, strconv.Itoa(c))
		}
		os.WriteFile(filepath.Join(dir, "codes"), []byte(strings.Join(codes, "\n")+"\n"), 0o644)
		stub := `#!/bin/bash
echo call >>"` + dir + `/calls"
code=$(head -n1 "` + dir + `/codes"); sed -i 1d "` + dir + `/codes"
exit "$code"
`
		os.WriteFile(filepath.Join(dir, "audiencematch"), []byte(stub), 0o755)
		os.WriteFile(filepath.Join(dir, "sleep"), []byte("#!/bin/sh\necho \"$@\" >>"+dir+"/slept\n"), 0o755)
		os.WriteFile(filepath.Join(dir, "logger"), []byte("#!/bin/sh\ncat >/dev/null\n"), 0o755)
		sh := exec.Command("/bin/bash", "-c", strings.ReplaceAll(command, "/usr/local/bin/audiencematch", filepath.Join(dir, "audiencematch")))
		sh.Env = []string{"PATH=" + dir + ":/usr/bin:/bin", "SHELL=/bin/bash"}
		out, err := sh.CombinedOutput()
		calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
		if n := strings.Count(string(calls), "call"); n != c.calls || err != nil {
			t.Errorf("exits %v: %d calls, want %d (%v)", c.codes, n, c.calls, err)
		}
		if c.mail == "" && len(out) != 0 || c.mail != "" && !strings.Contains(string(out), c.mail) {
			t.Errorf("exits %v: cron would mail %q, want %q", c.codes, out, c.mail)
		}
		if slept, _ := os.ReadFile(filepath.Join(dir, "slept")); strings.Count(string(slept), "900") != c.calls-1 && c.codes[c.calls-1] != 75 {
			t.Errorf("exits %v: slept %q", c.codes, slept)
		}
	}
}

// image is what the Dockerfile's build command tags.
func image(t *testing.T) string {
	m := regexp.MustCompile(`docker build -f scripts/deploy/Dockerfile .* -t (\S+) \.`).FindStringSubmatch(read(t, "Dockerfile"))
	if m == nil {
		t.Fatal("the Dockerfile does not say how it is built")
	}
	return m[1]
}

// TestDockerfile: a static binary on distroless or scratch, run as a
// numeric non-root user; built with docker where a daemon answers.
func TestDockerfile(t *testing.T) {
	df := read(t, "Dockerfile")
	froms := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(df, -1)
	if len(froms) == 0 || !regexp.MustCompile(`^(gcr.io/distroless/static\S*|scratch)$`).MatchString(froms[len(froms)-1][1]) {
		t.Errorf("the final stage is %v, want distroless/static or scratch", froms)
	}
	if !strings.Contains(df, "CGO_ENABLED=0 go build") || !regexp.MustCompile(`(?m)^USER 65532:65532$`).MatchString(df) ||
		!strings.Contains(df, `ENTRYPOINT ["/audiencematch"]`) {
		t.Error("want CGO_ENABLED=0, USER 65532:65532 and the binary as the entry point")
	}
	if err := exec.Command("docker", "info").Run(); err != nil {
		t.Skipf("no container builder answers here (docker info: %v): the image is not built; TestManifestsRunInTheImage runs its binary as the image would", err)
	}
	cmd := exec.Command("docker", "build", "-f", "scripts/deploy/Dockerfile", "-t", image(t), ".")
	cmd.Dir = "../../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
}

// manifests are the CronJobs of the manifest files, by file name and, in a
// file of several YAML documents (indexed-job.yaml: the shards and their
// commit), "#" and the document's number from 1.
func manifests(t *testing.T) map[string]*batchv1.CronJob {
	t.Helper()
	out := map[string]*batchv1.CronJob{}
	for _, name := range []string{"cronjob.yaml", "indexed-job.yaml"} {
		// sigs.k8s.io/yaml reads one document: each is decoded on its own,
		// so that none goes unchecked.
		docs := regexp.MustCompile(`(?m)^---[ \t]*$`).Split(read(t, name), -1)
		for i, doc := range docs {
			key := name
			if len(docs) > 1 {
				key = name + "#" + strconv.Itoa(i+1)
			}
			var cj batchv1.CronJob
			// Strict: a field batch/v1 does not have is an error, not ignored.
			if err := yaml.UnmarshalStrict([]byte(doc), &cj); err != nil {
				t.Fatalf("%s: %v", key, err)
			}
			if cj.APIVersion != "batch/v1" || cj.Kind != "CronJob" {
				t.Fatalf("%s: %s %s", key, cj.APIVersion, cj.Kind)
			}
			out[key] = &cj
		}
	}
	if len(out) != 3 {
		t.Errorf("%d CronJobs in the manifests, want 3 (the run; the shards and their commit)", len(out))
	}
	return out
}

func containersOf(cj *batchv1.CronJob) []corev1.Container {
	spec := cj.Spec.JobTemplate.Spec.Template.Spec
	return slices.Concat(spec.InitContainers, spec.Containers)
}

// TestManifests: the manifests decode strictly as batch/v1 CronJobs, run
// the Dockerfile's image with its entry point, non-root, read-only, without
// privilege escalation or capabilities, the volumes given to its user.
func TestManifests(t *testing.T) {
	img := image(t)
	for name, cj := range manifests(t) {
		pod := cj.Spec.JobTemplate.Spec.Template.Spec
		psc := pod.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
			psc.FSGroup == nil || *psc.FSGroup != 65532 || psc.FSGroupChangePolicy == nil || *psc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch {
			t.Errorf("%s: pod security context %+v", name, psc)
		}
		if len(strings.Fields(cj.Spec.Schedule)) != 5 {
			t.Errorf("%s: schedule %q: want one five-field cron expression", name, cj.Spec.Schedule)
		}
		if cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
			t.Errorf("%s: concurrency %s", name, cj.Spec.ConcurrencyPolicy)
		}
		pfp := cj.Spec.JobTemplate.Spec.PodFailurePolicy
		if pfp == nil || len(pfp.Rules) != 1 || pfp.Rules[0].OnExitCodes == nil || !slices.Equal(pfp.Rules[0].OnExitCodes.Values, []int32{75}) ||
			pfp.Rules[0].OnExitCodes.Operator != batchv1.PodFailurePolicyOnExitCodesOpNotIn {
			t.Errorf("%s: only 75 may be retried: %+v", name, pfp)
		}
		for _, c := range containersOf(cj) {
			sc := c.SecurityContext
			if c.Image != img || len(c.Command) != 0 {
				t.Errorf("%s/%s: image %s command %v: want %s's entry point", name, c.Name, c.Image, c.Command, img)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.ReadOnlyRootFilesystem == nil ||
				!*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("%s/%s: container security context %+v", name, c.Name, sc)
			}
		}
	}
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// staticBinary builds audiencematch as the Dockerfile does.
func staticBinary(t *testing.T) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploycheck-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "audiencematch")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", binary, "./cmd/audiencematch")
		cmd.Dir = "../../.."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = errors.New(string(out))
		}
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return binary
}

// TestManifestsRunInTheImage: the binary the Dockerfile builds is static
// (distroless/static has no libc), and every container's arguments are a
// command it accepts, run as the image's user in a root holding the binary
// alone, as in the image: no shell, no date, nothing else.
func TestManifestsRunInTheImage(t *testing.T) {
	bin := staticBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked")
		}
	}
	f.Close()
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot chroot to run the binary alone as the image's user")
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	b, _ := os.ReadFile(bin)
	os.WriteFile(filepath.Join(root, "audiencematch"), b, 0o755)
	for name, cj := range manifests(t) {
		for _, c := range containersOf(cj) {
			// --help: the command and every flag must exist; nothing runs.
			cmd := exec.Command("/audiencematch", append(slices.Clone(c.Args), "--help")...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root, Credential: &syscall.Credential{Uid: 65532, Gid: 65532}}
			cmd.Dir = "/"
			cmd.Env = []string{}
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Usage:") {
				t.Errorf("%s/%s: %v in the image: %v\n%s", name, c.Name, c.Args, err, out)
			}
		}
	}
}
