package main

import (
	"bytes"
	"crypto/tls"
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
// returns what it configures.
func parseWebConfig(path string, raw []byte) (*webState, error) {
	// The toolkit's own check also loads the certificates and checks the
	// password hashes; it reads the file itself, so its content may be newer
	// than raw, which is then read again on the next request.
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

// current returns what the file configures now. A changed file that is not
// valid is reported and the previous configuration kept, so that a typo
// neither locks everybody out nor lets everybody in.
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
