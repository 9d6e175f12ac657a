package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rancher/pushprox/internal/testpki"
)

// lastReloadOK reads pushprox_proxy_web_config_last_reload_successful.
func (sp *secProxy) lastReloadOK(t *testing.T) float64 {
	t.Helper()
	families, err := sp.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "pushprox_proxy_web_config_last_reload_successful" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no pushprox_proxy_web_config_last_reload_successful")
	return 0
}

// status answers GET /clients with the given password of user prometheus,
// or none when empty.
func (sp *secProxy) status(t *testing.T, password string) int {
	t.Helper()
	creds := secCreds{}
	if password != "" {
		creds = secCreds{user: "prometheus", password: password}
	}
	resp, err := sp.request(t, context.Background(), creds, http.MethodGet, "/clients", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestAReloadThatWouldOpenTheDoorIsRefused(t *testing.T) {
	original := secWebConfig(t, map[string]string{"prometheus": "secret"})
	sp := startSecProxy(t, false, original)
	tlsOnly := secWebConfig(t, nil)
	for _, tc := range []struct {
		name    string
		content string
	}{
		{name: "without users", content: tlsOnly},
		{name: "without TLS", content: original[strings.Index(original, "basic_auth_users:"):]},
		{name: "without client certificate checks", content: strings.Replace(original, "  client_auth_type: VerifyClientCertIfGiven\n", "", 1)},
		{name: "empty", content: ""},
		{name: "blank", content: "\n  \n"},
		{name: "cut in the middle of the users", content: original[:strings.Index(original, "basic_auth_users:")+len("basic_auth_users:\n  prom")]},
		{name: "cut before the users", content: original[:strings.Index(original, "basic_auth_users:")]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testpki.WriteFile(t, sp.dir, "web.yml", []byte(tc.content))
			if code := sp.status(t, ""); code != http.StatusUnauthorized {
				t.Errorf("no password answered %d, want 401", code)
			}
			if code := sp.status(t, "secret"); code != http.StatusOK {
				t.Errorf("password of the running configuration answered %d", code)
			}
			if got := sp.lastReloadOK(t); got != 0 {
				t.Errorf("last reload successful = %v, want 0", got)
			}
			testpki.WriteFile(t, sp.dir, "web.yml", []byte(original))
			if code := sp.status(t, "secret"); code != http.StatusOK || sp.lastReloadOK(t) != 1 {
				t.Errorf("original configuration not taken back: %d", code)
			}
		})
	}
}

func TestRewritingTheWebConfigNeverLetsAnUnauthenticatedRequestThrough(t *testing.T) {
	first := secWebConfig(t, map[string]string{"prometheus": "first"})
	second := secWebConfig(t, map[string]string{"prometheus": "second"})
	sp := startSecProxy(t, false, first)
	// Rewrites are not atomic: readers see the file empty and half written.
	const rewrites = 300
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		for i := 0; i < rewrites; i++ {
			content := first
			if i%2 == 1 {
				content = second
			}
			if err := os.WriteFile(sp.webConfig, []byte(content), 0o600); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	requests := 0
	for {
		select {
		case <-done:
			wg.Wait()
			if requests == 0 {
				t.Error("no request made while the file was rewritten")
			}
			return
		default:
		}
		requests++
		if code := sp.status(t, ""); code == http.StatusOK {
			t.Fatalf("an unauthenticated request got 200 while the web config was rewritten (request %d)", requests)
		}
	}
}

func TestSIGHUPReloadsTheProxyInsteadOfEndingIt(t *testing.T) {
	original := secWebConfig(t, map[string]string{"prometheus": "secret"})
	dir := t.TempDir()
	ca := testpki.NewCA(t, "pushprox test CA")
	testpki.WriteFile(t, dir, "ca.crt", ca.PEM)
	ca.Server(t).WriteFiles(t, dir, "server")
	path := testpki.WriteFile(t, dir, "web.yml", []byte(original))
	proxy, _ := startProxyBinary(t, "--web.config.file="+path)
	proxy.WaitForOutput(regexp.MustCompile(`msg="sighup reloads the web config"`))

	proxy.Signal(syscall.SIGHUP)
	proxy.WaitForOutput(regexp.MustCompile(`msg="reloading on sighup"`))
	testpki.WriteFile(t, dir, "web.yml", []byte(secWebConfig(t, nil)))
	proxy.Signal(syscall.SIGHUP)
	proxy.WaitForOutput(regexp.MustCompile(`level=error [^\n]*msg="web config not reloaded, keeping the previous one"[^\n]*removes every basic_auth_users entry`))
	proxy.Signal(syscall.SIGTERM)
	if code := proxy.Wait(); code != 0 {
		t.Errorf("proxy exited with %d after SIGHUP and SIGTERM:\n%s", code, proxy.Output())
	}
}

func TestWebConfigChangesApplyWithoutRestart(t *testing.T) {
	sp := startSecProxy(t, false, secWebConfig(t, map[string]string{"prometheus": "old-secret"}))
	serverSerial := func() string {
		conn, err := tls.Dial("tcp", sp.addr, &tls.Config{RootCAs: sp.ca.Pool()})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	t.Run("server certificate", func(t *testing.T) {
		before := serverSerial()
		renewed := sp.ca.Server(t)
		renewed.WriteFiles(t, sp.dir, "server")
		if got := serverSerial(); got != renewed.Cert.SerialNumber.String() || got == before {
			t.Errorf("handshake after renewal shows serial %s, want the renewed %s (was %s)", got, renewed.Cert.SerialNumber, before)
		}
	})
	t.Run("users", func(t *testing.T) {
		if code := sp.status(t, "old-secret"); code != http.StatusOK {
			t.Fatalf("old password answered %d before the change", code)
		}
		testpki.WriteFile(t, sp.dir, "web.yml", []byte(secWebConfig(t, map[string]string{"prometheus": "new-secret"})))
		if code := sp.status(t, "old-secret"); code != http.StatusUnauthorized {
			t.Errorf("old password answered %d after the change, want 401", code)
		}
		if code := sp.status(t, "new-secret"); code != http.StatusOK {
			t.Errorf("new password answered %d", code)
		}
		if got := sp.lastReloadOK(t); got != 1 {
			t.Errorf("last reload successful = %v, want 1", got)
		}
	})
	t.Run("invalid file keeps the previous configuration", func(t *testing.T) {
		testpki.WriteFile(t, sp.dir, "web.yml", []byte("basic_auth_users: [not, a, map]\n"))
		if code := sp.status(t, "new-secret"); code != http.StatusOK {
			t.Errorf("password of the previous configuration answered %d", code)
		}
		if code := sp.status(t, ""); code != http.StatusUnauthorized {
			t.Errorf("no password answered %d, want 401", code)
		}
		if got := sp.lastReloadOK(t); got != 0 {
			t.Errorf("last reload successful = %v, want 0", got)
		}
	})
}
