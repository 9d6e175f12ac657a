package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rancher/pushprox/internal/testbin"
)

// waitLimit bounds every wait for an event. It is generous on purpose: it
// only decides how long a broken test takes to fail, not whether a working
// one passes.
const waitLimit = 30 * time.Second

// proxyBin and clientBin are the real binaries, built once for the tests
// that run them.
var proxyBin, clientBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pushprox-client-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for pkg, bin := range map[string]*string{
		"github.com/rancher/pushprox/cmd/proxy":  &proxyBin,
		"github.com/rancher/pushprox/cmd/client": &clientBin,
	} {
		if *bin, err = testbin.Build(dir, pkg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestFlags(t *testing.T) {
	t.Run("help", func(t *testing.T) {
		for _, flag := range []string{"--help", "-h"} {
			var buf bytes.Buffer
			if code := run([]string{flag}, &buf); code != 0 {
				t.Errorf("run(%s) = %d, want 0; output:\n%s", flag, code, buf.String())
			}
			for _, want := range []string{"usage: pushprox-client", "--proxy-url", "--allow-port", "--token-path"} {
				if !strings.Contains(buf.String(), want) {
					t.Errorf("run(%s) output lacks %q", flag, want)
				}
			}
		}
	})

	// --fqdn spares the tests a DNS look-up of this host.
	base := []string{"--fqdn=node.example", "--proxy-url=http://proxy.example:8080"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "proxy URL scheme", args: []string{"--fqdn=node.example", "--proxy-url=ftp://x"}, want: "scheme must be http or https"},
		{name: "proxy URL without host", args: []string{"--fqdn=node.example", "--proxy-url=http://"}, want: "no host"},
		{name: "missing proxy URL", args: []string{"--fqdn=node.example"}, want: "--proxy-url"},
		{name: "allow-port not a number", args: append(base, "--allow-port=abc"), want: `--allow-port must be a port number or *, not "abc"`},
		{name: "allow-port out of range", args: append(base, "--allow-port=65536"), want: "--allow-port must be a port number"},
		{name: "negative retry wait", args: append(base, "--proxy.retry.initial-wait=-1s"), want: "--proxy.retry.initial-wait must be positive"},
		{name: "max wait below initial wait", args: append(base, "--proxy.retry.initial-wait=2s", "--proxy.retry.max-wait=1s"), want: "--proxy.retry.max-wait"},
		{name: "use-localhost alone", args: append(base, "--use-localhost"), want: "--use-localhost needs --allow-port"},
		{name: "log level", args: append(base, "--log.level=loud"), want: "--log.level"},
		{name: "log format", args: append(base, "--log.format=xml"), want: "--log.format"},
		{name: "bad FQDN", args: []string{"--fqdn=no/slashes", "--proxy-url=http://proxy.example"}, want: "--fqdn"},
		{name: "unknown flag", args: append(base, "--bogus"), want: "--bogus"},
		{name: "missing CA file", args: append(base, "--tls.cacert=/nonexistent/ca.pem"), want: "/nonexistent/ca.pem"},
		{name: "negative shutdown timeout", args: append(base, "--web.shutdown-timeout=-1s"), want: "--web.shutdown-timeout must not be negative"},
		{name: "negative GOMAXPROCS", args: append(base, "--runtime.gomaxprocs=-1"), want: "--runtime.gomaxprocs must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			code := run(tc.args, &buf)
			if code == 0 {
				t.Fatalf("run(%q) = 0, want an error", tc.args)
			}
			out := strings.TrimSuffix(buf.String(), "\n")
			if strings.Contains(out, "\n") || !strings.HasPrefix(out, "pushprox-client: ") || !strings.Contains(out, tc.want) {
				t.Errorf("run(%q) wrote %q, want one line with %q", tc.args, buf.String(), tc.want)
			}
		})
	}
}

func TestTheClientRunsOnOneThreadUnlessToldOtherwise(t *testing.T) {
	base := []string{"--fqdn=node.example", "--proxy-url=http://proxy.example:8080"}
	for _, tc := range []struct {
		name        string
		args        []string
		environment string // GOMAXPROCS
		// flagEnvironment is PUSHPROX_CLIENT_RUNTIME_GOMAXPROCS.
		flagEnvironment string
		want            int
	}{
		{name: "by default", args: base, want: 1},
		{name: "with the flag", args: append(base, "--runtime.gomaxprocs=4"), want: 4},
		{name: "with 0, Go's choice", args: append(base, "--runtime.gomaxprocs=0"), want: 0},
		{name: "with GOMAXPROCS in the environment", args: base, environment: "3", want: 0},
		{name: "with the flag and GOMAXPROCS in the environment", args: append(base, "--runtime.gomaxprocs=2"), environment: "3", want: 2},
		{name: "with the flag's own variable and GOMAXPROCS in the environment", args: base, environment: "3", flagEnvironment: "4", want: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for name, value := range map[string]string{"GOMAXPROCS": tc.environment, "PUSHPROX_CLIENT_RUNTIME_GOMAXPROCS": tc.flagEnvironment} {
				t.Setenv(name, value)
				if value == "" {
					os.Unsetenv(name)
				}
			}
			cfg, err := parseFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.maxProcs != tc.want {
				t.Errorf("maxProcs = %d, want %d", cfg.maxProcs, tc.want)
			}
		})
	}
}

// realProxy starts the proxy binary and returns its URL.
func realProxy(t *testing.T) *url.URL {
	t.Helper()
	p := testbin.Start(t, proxyBin, "--web.listen-address=127.0.0.1:0", "--log.level=debug")
	match := p.WaitForOutput(regexp.MustCompile(`msg=listening address=(127\.0\.0\.1:\d+)`))
	u, err := url.Parse("http://" + match[1])
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestClientBinaryServesAndStopsOnSignal(t *testing.T) {
	target := startTarget(t, false, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "binary_up 1\n")
	})
	proxyURL := realProxy(t)
	client := testbin.Start(t, clientBin,
		"--proxy-url="+proxyURL.String(),
		"--fqdn=node.example",
		"--use-localhost",
		"--allow-port="+port(t, target),
		"--metrics-addr=127.0.0.1:0",
		"--log.level=debug",
	)
	metricsAddr := client.WaitForOutput(regexp.MustCompile(`msg=polling .*metrics_address=(127\.0\.0\.1:\d+)`))[1]

	scraper := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}}
	t.Cleanup(scraper.CloseIdleConnections)
	resp, err := scraper.Get("http://node.example:" + port(t, target) + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "binary_up 1\n" {
		t.Errorf("scrape through the client binary: %s %q", resp.Status, body)
	}

	resp, err = http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("client metrics: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"pushprox_client_scrape_errors_total", "pushprox_client_push_errors_total", "pushprox_client_poll_errors_total",
		"pushprox_client_poll_cuts_total", "pushprox_client_scrape_duration_seconds_count", `pushprox_client_transport{transport="tunnel"} 1`} {
		if !strings.Contains(string(body), name) {
			t.Errorf("client metrics lack %s", name)
		}
	}

	client.Signal(syscall.SIGTERM)
	if code := client.Wait(); code != 0 {
		t.Errorf("client exited with %d after SIGTERM:\n%s", code, client.Output())
	}
}

func TestSIGHUPReloadsTheClientInsteadOfEndingIt(t *testing.T) {
	dir := t.TempDir()
	webConfig := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(webConfig, []byte("http_server_config:\n  http2: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp := startFakeProxy(t)
	client := testbin.Start(t, clientBin,
		"--proxy-url="+fp.url(t).String(),
		"--fqdn=node.example",
		"--metrics-addr=127.0.0.1:0",
		"--web.config.file="+webConfig,
	)
	client.WaitForOutput(regexp.MustCompile(`msg=polling`))
	// The exporter toolkit has read the file and serves.
	client.WaitForOutput(regexp.MustCompile(`msg="TLS is disabled."`))
	client.Signal(syscall.SIGHUP)
	client.WaitForOutput(regexp.MustCompile(`msg="reloading on sighup"`))
	client.WaitForOutput(regexp.MustCompile(`msg=reloaded what="web config"`))
	// A web config that cannot be used is reported, and the client goes on.
	if err := os.WriteFile(webConfig, []byte("basic_auth_users:\n  alice: not-a-hash\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	client.Signal(syscall.SIGHUP)
	client.WaitForOutput(regexp.MustCompile(`level=error [^\n]*msg="reload failed, keeping the previous state" what="web config"`))
	client.Signal(syscall.SIGTERM)
	if code := client.Wait(); code != 0 {
		t.Errorf("client exited with %d after SIGHUP and SIGTERM:\n%s", code, client.Output())
	}
}

// fakeResolver answers look-ups from maps; a missing entry is an error.
type fakeResolver struct {
	addrs map[string][]net.IPAddr
	names map[string][]string
}

func (f fakeResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	if addrs, ok := f.addrs[host]; ok {
		return addrs, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func (f fakeResolver) LookupAddr(_ context.Context, addr string) ([]string, error) {
	if names, ok := f.names[addr]; ok {
		return names, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: addr, IsNotFound: true}
}

func TestTheDefaultFQDNIsFoundAsTheReferenceClientFindsIt(t *testing.T) {
	v4 := func(s string) net.IPAddr { return net.IPAddr{IP: net.ParseIP(s)} }
	for _, tc := range []struct {
		name     string
		resolver fakeResolver
		want     string
	}{
		{"the first IPv4 address's first name, without its dot", fakeResolver{
			addrs: map[string][]net.IPAddr{"node1": {v4("2001:db8::1"), v4("10.0.0.7"), v4("10.0.0.8")}},
			names: map[string][]string{"10.0.0.7": {"node1.example.com.", "node1"}, "10.0.0.8": {"other.example.com."}},
		}, "node1.example.com"},
		{"as hosts(5) resolves a loopback name", fakeResolver{
			addrs: map[string][]net.IPAddr{"node1": {v4("127.0.0.1")}},
			names: map[string][]string{"127.0.0.1": {"localhost"}},
		}, "localhost"},
		{"the host name when it does not resolve", fakeResolver{}, "node1"},
		{"the host name without an IPv4 address", fakeResolver{
			addrs: map[string][]net.IPAddr{"node1": {v4("2001:db8::1")}},
			names: map[string][]string{"2001:db8::1": {"node1.example.com."}},
		}, "node1"},
		{"the host name when the first IPv4 address has no name", fakeResolver{
			addrs: map[string][]net.IPAddr{"node1": {v4("10.0.0.7"), v4("10.0.0.8")}},
			names: map[string][]string{"10.0.0.8": {"other.example.com."}},
		}, "node1"},
		{"the host name when the name is empty", fakeResolver{
			addrs: map[string][]net.IPAddr{"node1": {v4("10.0.0.7")}},
			names: map[string][]string{"10.0.0.7": {"."}},
		}, "node1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := reverseName(context.Background(), tc.resolver, "node1"); got != tc.want {
				t.Errorf("reverseName = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoopbackNamesAreToldApart(t *testing.T) {
	for name, want := range map[string]bool{
		"localhost":             true,
		"LocalHost.":            true,
		"localhost.localdomain": true,
		"app.localhost":         true,
		"127.0.1.1":             true,
		"::1":                   true,
		"node1":                 false,
		"node1.example.com":     false,
		"localhostess.example":  false,
		"10.0.0.7":              false,
	} {
		if got := isLoopbackName(name); got != want {
			t.Errorf("isLoopbackName(%q) = %v, want %v", name, got, want)
		}
	}
}
