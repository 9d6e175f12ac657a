package chart

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	corev1 "k8s.io/api/core/v1"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// TestMain removes the binaries the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binaries builds pushprox-proxy and pushprox-client from this checkout
// once per test run, and returns the folder holding them.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "pushprox-chart-bin-")
		if buildErr != nil {
			return
		}
		for name, pkg := range map[string]string{"pushprox-proxy": "./cmd/proxy", "pushprox-client": "./cmd/client"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg)
			cmd.Dir = ".."
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v: %s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// fixtures are the files a rendered container expects in its mounts
// (Secrets, copied certificates), made up for a test run: one self-signed
// certificate serves as certificate, CA and client certificate.
type fixtures struct {
	dir      string
	certFile string
	keyFile  string
	tls      bool // web configs serve TLS
	users    bool // web configs ask for a password
}

func newFixtures(t *testing.T, tls, users bool) *fixtures {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixtures{dir: dir, certFile: filepath.Join(dir, "fixture.crt"), keyFile: filepath.Join(dir, "fixture.key"), tls: tls, users: users}
	write(t, f.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	write(t, f.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	return f
}

func write(t *testing.T, name string, content []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, content, 0o600); err != nil {
		t.Fatal(err)
	}
}

// materialize creates the file a container expects at containerPath and
// returns where it is on this machine. What it holds follows its name.
func (f *fixtures) materialize(t *testing.T, containerPath string) string {
	t.Helper()
	local := filepath.Join(f.dir, "root", filepath.FromSlash(containerPath))
	if _, err := os.Stat(local); err == nil {
		return local
	}
	base := path.Base(containerPath)
	switch {
	case strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".yaml"):
		// A web config with what the chart says it holds: a user, and a
		// server certificate with verified client certificates (for
		// --auth.bind-fqdn-to-cert).
		var config []byte
		if f.users {
			hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
			if err != nil {
				t.Fatal(err)
			}
			config = fmt.Appendf(config, "basic_auth_users:\n  prometheus: %s\n", hash)
		}
		if f.tls {
			config = fmt.Appendf(config, "tls_server_config:\n  cert_file: %s\n  key_file: %s\n  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: %s\n",
				f.certFile, f.keyFile, f.certFile)
		}
		write(t, local, config)
	case strings.Contains(base, "password"), strings.Contains(base, "token"):
		write(t, local, []byte("secret\n"))
	case strings.Contains(base, "key"):
		content, err := os.ReadFile(f.keyFile)
		if err != nil {
			t.Fatal(err)
		}
		write(t, local, content)
	default:
		content, err := os.ReadFile(f.certFile)
		if err != nil {
			t.Fatal(err)
		}
		write(t, local, content)
	}
	return local
}

// varRef is a Kubernetes $(VAR) reference in a container's arguments.
var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandArgs expands $(VAR) as the kubelet does, from the container's env;
// the node's IP is 127.0.0.1 here.
func expandArgs(t *testing.T, c corev1.Container) []string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.hostIP":
			env[e.Name] = "127.0.0.1"
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		}
	}
	var args []string
	for _, a := range c.Args {
		args = append(args, varRef.ReplaceAllStringFunc(a, func(ref string) string {
			name := varRef.FindStringSubmatch(ref)[1]
			v, ok := env[name]
			if !ok {
				t.Errorf("container %s: argument %q names $(%s), which its env does not set", c.Name, a, name)
			}
			return v
		}))
	}
	return args
}

// localArgs turns a container's expanded arguments into ones that run
// here, changing only what cannot be the same on this machine: listen
// addresses become free loopback ports, the proxy URL's host and port
// become a loopback listener (so that no name is looked up in DNS), and
// files under the container's mounts become fixture files.
func localArgs(t *testing.T, c corev1.Container, args []string, f *fixtures, proxyAddr string) []string {
	t.Helper()
	mounts := []string{"/var/run/secrets/kubernetes.io/serviceaccount/"}
	for _, m := range c.VolumeMounts {
		mounts = append(mounts, strings.TrimSuffix(m.MountPath, "/")+"/")
	}
	var out []string
	for _, a := range args {
		name, value, hasValue := strings.Cut(a, "=")
		switch {
		case !hasValue:
		case name == "--web.listen-address" || name == "--metrics-addr":
			value = "127.0.0.1:0"
		case name == "--proxy-url":
			u, err := url.Parse(value)
			if err != nil || u.Host == "" {
				t.Errorf("container %s: --proxy-url %q is not a URL with a host: %v", c.Name, value, err)
				break
			}
			u.Host = proxyAddr
			value = u.String()
		default:
			for _, m := range mounts {
				if strings.HasPrefix(value, m) {
					value = f.materialize(t, value)
					break
				}
			}
		}
		if hasValue {
			a = name + "=" + value
		}
		out = append(out, a)
	}
	return out
}

// startedLine tells, from a log line, that a binary got past its flags
// and its setup: the proxy listens, the client polls.
var startedLine = regexp.MustCompile(`msg=(listening|polling)\b|"msg":"(listening|polling)"`)

// runsWith starts binary with args and reports nil once it logs that it
// started and onStart, given that log line, found nothing wrong; else why
// not: it exited (a refused flag exits at once with its reason) or did not
// start within the time allowed. It stops the process either way.
func runsWith(binary string, args []string, onStart func(line string) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	// The binaries read flags from PUSHPROX_* variables too: none of the
	// test's environment may add any.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PUSHPROX_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	// All reading happens here, so that Wait runs only after the pipe is
	// drained, as os/exec asks.
	lines := make(chan string)
	go func() {
		defer close(lines)
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
	}()
	var output strings.Builder
	started := false
	var startErr error
	for line := range lines {
		output.WriteString(line + "\n")
		if !started && startedLine.MatchString(line) {
			started = true
			startErr = onStart(line)
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	waitErr := cmd.Wait()
	switch {
	case ctx.Err() != nil && started:
		return fmt.Errorf("started but did not stop on SIGTERM within the time allowed:\n%s", output.String())
	case ctx.Err() != nil:
		return fmt.Errorf("did not start within the time allowed:\n%s", output.String())
	case !started:
		return fmt.Errorf("exited (%v) without starting:\n%s", waitErr, output.String())
	case startErr != nil:
		return fmt.Errorf("started, but %v:\n%s", startErr, output.String())
	case waitErr != nil:
		return fmt.Errorf("stopped with %v after starting:\n%s", waitErr, output.String())
	}
	return nil
}

// parkedProxy is a loopback listener standing in for the proxy: it takes
// the clients' connections and never answers, so that a client under test
// stays parked instead of reaching anything else.
func parkedProxy(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
