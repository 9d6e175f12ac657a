package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v2"
	"golang.org/x/time/rate"

	"github.com/rancher/pushprox/util"
)

// webConfigFile is --web.config.file, in the exporter toolkit's format. It
// is read again whenever its content changes, so that users, client CAs and
// TLS settings change without a restart; certificate and key files are read
// on every TLS handshake.
type webConfigFile struct {
	path         string
	logger       log.Logger
	lastReloadOK prometheus.Gauge

	mu sync.Mutex
	// raw is the content last read, valid or not; guarded by mu.
	raw []byte
	// state is what the last valid content configures; guarded by mu.
	state *webState
	// lastErr is the last reload error logged, so that a bad file is
	// reported once, not on every request; guarded by mu.
	lastErr string
}

// webState is what one version of the web config file configures.
type webState struct {
	config  *web.Config
	limiter *rate.Limiter // nil without rate_limit
}

// openWebConfigFile reads and checks the web config file at path.
func openWebConfigFile(path string, logger log.Logger, reg prometheus.Registerer) (*webConfigFile, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	state, err := parseWebConfig(path, raw)
	if err != nil {
		return nil, err
	}
	f := &webConfigFile{
		path:   path,
		logger: logger,
		lastReloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pushprox_proxy_web_config_last_reload_successful",
			Help: "Whether the last change of --web.config.file was valid and applied (1) or refused, keeping the previous configuration (0).",
		}),
		raw:   raw,
		state: state,
	}
	f.lastReloadOK.Set(1)
	if err := reg.Register(f.lastReloadOK); err != nil {
		return nil, err
	}
	return f, nil
}

// parseWebConfig checks a web config file as the exporter toolkit does and
// returns what it configures. An empty file is invalid: it is what a
// reader sees in the middle of a rewrite, never a configuration meant.
func parseWebConfig(path string, raw []byte) (*webState, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, errors.New("empty file")
	}
	// The toolkit's own check also loads the certificates and checks the
	// password hashes; it reads the file itself, so callers that reload
	// check that the file still holds raw afterwards.
	if err := web.Validate(path); err != nil {
		return nil, util.OneLine(err)
	}
	// The toolkit's defaults, as its unexported getConfig sets them.
	c := &web.Config{
		TLSConfig:  web.TLSConfig{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS13},
		HTTPConfig: web.HTTPConfig{HTTP2: true},
	}
	if err := yaml.UnmarshalStrict(raw, c); err != nil {
		return nil, util.OneLine(err)
	}
	c.TLSConfig.SetDirectory(filepath.Dir(path))
	state := &webState{config: c}
	if c.RateLimiterConfig.Interval != 0 {
		state.limiter = rate.NewLimiter(rate.Every(c.RateLimiterConfig.Interval), c.RateLimiterConfig.Burst)
	}
	return state, nil
}

// notWeaker says why next would open a door that running keeps shut, if
// it would: a reload may change users, certificates and CAs, but only a
// restart may remove basic authentication, client certificate checks or
// TLS. So a file caught half-written, or edited by mistake, can never let
// everybody in.
func notWeaker(running, next *web.Config) error {
	switch {
	case running.TLSConfig.IsEnabled() && !next.TLSConfig.IsEnabled():
		return errors.New("it turns TLS off, which only a restart may do")
	case len(running.Users) > 0 && len(next.Users) == 0:
		return errors.New("it removes every basic_auth_users entry, which only a restart may do")
	}
	runningRequires, runningVerifies := clientCertChecks(running.TLSConfig.ClientAuth)
	nextRequires, nextVerifies := clientCertChecks(next.TLSConfig.ClientAuth)
	if runningRequires && !nextRequires || runningVerifies && !nextVerifies {
		return fmt.Errorf("it weakens client_auth_type from %q to %q, which only a restart may do", running.TLSConfig.ClientAuth, next.TLSConfig.ClientAuth)
	}
	return nil
}

// clientCertChecks says whether a client_auth_type requires a client
// certificate, and whether it verifies one that is given.
func clientCertChecks(clientAuth string) (requires, verifies bool) {
	switch clientAuth {
	case "RequireAnyClientCert":
		return true, false
	case "VerifyClientCertIfGiven":
		return false, true
	case "RequireAndVerifyClientCert":
		return true, true
	}
	return false, false
}

// current returns what the file configures now. A changed file that is not
// valid, or that would be weaker than the running configuration, is
// reported and the previous configuration kept, so that a typo or a
// half-written file neither locks everybody out nor lets everybody in.
func (f *webConfigFile) current() *webState {
	raw, readErr := os.ReadFile(f.path)
	f.mu.Lock()
	defer f.mu.Unlock()
	if readErr == nil && bytes.Equal(raw, f.raw) {
		return f.state
	}
	err := readErr
	if err == nil {
		var state *webState
		state, err = parseWebConfig(f.path, raw)
		if err == nil {
			err = notWeaker(f.state.config, state.config)
		}
		if again, _ := os.ReadFile(f.path); !bytes.Equal(again, raw) {
			// Changed while it was checked: what was checked may not be
			// raw. It is read again on the next request.
			return f.state
		}
		// A bad file is not parsed again until it changes.
		f.raw = raw
		if err == nil {
			f.state = state
			f.lastErr = ""
			f.lastReloadOK.Set(1)
			level.Info(f.logger).Log("msg", "web config reloaded", "file", f.path)
			return f.state
		}
	}
	f.lastReloadOK.Set(0)
	if err.Error() != f.lastErr {
		f.lastErr = err.Error()
		level.Error(f.logger).Log("msg", "web config not reloaded, keeping the previous one", "file", f.path, "err", err)
	}
	return f.state
}

// reloadOnSIGHUP makes SIGHUP re-read the web config file at once, instead
// of ending the proxy, until ctx ends or the returned stop is called. The
// file is also re-read whenever it changes; SIGHUP makes the outcome
// visible in the log and the reload metric without waiting for a request.
func (s *security) reloadOnSIGHUP(ctx context.Context) (stop func()) {
	stop = util.OnSIGHUP(ctx, s.logger, func() {
		if s.file != nil {
			s.file.current()
		}
	})
	// Logged once SIGHUP is caught, so that a signal sent after this line
	// reloads.
	level.Debug(s.logger).Log("msg", "sighup reloads the web config")
	return stop
}

// tlsConfig returns the TLS settings for one handshake.
func (f *webConfigFile) tlsConfig(*tls.ClientHelloInfo) (*tls.Config, error) {
	cfg, err := web.ConfigToTLSConfig(&f.current().config.TLSConfig)
	if err != nil {
		level.Error(f.logger).Log("msg", "tls handshake refused: no usable tls_server_config", "file", f.path, "err", err)
		return nil, err
	}
	cfg.NextProtos = []string{"http/1.1"}
	return cfg, nil
}
