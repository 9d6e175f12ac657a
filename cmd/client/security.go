package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/exporter-toolkit/web"

	"github.com/rancher/pushprox/util"
)

// securityConfig holds the flags that lock a client down: credentials for
// the proxy, TLS towards targets apart from TLS towards the proxy, the
// targets a proxy may ask for, and the metrics listener's web config.
type securityConfig struct {
	proxyUsername     string
	proxyPasswordFile string

	scrapeCAFile             string
	scrapeCertFile           string
	scrapeKeyFile            string
	scrapeInsecureSkipVerify bool
	// scrapeTLSGiven records whether any --scrape.tls.* flag was given.
	scrapeTLSGiven bool

	scrapeAllow   allowList
	webConfigFile string
}

// addSecurityFlags defines the flags of s on app.
func addSecurityFlags(app *kingpin.Application, s *securityConfig) {
	app.Flag("proxy.username", "User for basic authentication to the proxy; needs --proxy.password-file.").
		StringVar(&s.proxyUsername)
	app.Flag("proxy.password-file", "File holding the password for --proxy.username; read on each request, so a rotated password is used at once.").
		ExistingFileVar(&s.proxyPasswordFile)
	app.Flag("scrape.tls.cacert", "CA certificate file to verify HTTPS targets. Giving any --scrape.tls.* flag stops the --tls.* settings from applying to targets.").
		IsSetByUser(&s.scrapeTLSGiven).ExistingFileVar(&s.scrapeCAFile)
	app.Flag("scrape.tls.cert", "Client certificate file presented to HTTPS targets.").
		IsSetByUser(&s.scrapeTLSGiven).ExistingFileVar(&s.scrapeCertFile)
	app.Flag("scrape.tls.key", "Key file of --scrape.tls.cert.").
		IsSetByUser(&s.scrapeTLSGiven).ExistingFileVar(&s.scrapeKeyFile)
	app.Flag("scrape.tls.insecure-skip-verify", "Skip verification of HTTPS targets' certificates.").
		IsSetByUser(&s.scrapeTLSGiven).BoolVar(&s.scrapeInsecureSkipVerify)
	app.Flag("scrape.allow", "Target HOST:PORT/PATH the proxy may ask for, each part a glob (e.g. '*:9100/metrics'); repeatable. When given, every other target is refused.").
		SetValue(&s.scrapeAllow)
	app.Flag("web.config.file", "Exporter-toolkit web config file for TLS and basic auth on the metrics listener.").
		ExistingFileVar(&s.webConfigFile)
}

// separateScrapeTLS reports whether targets get their own TLS settings.
// Without any --scrape.tls.* flag they share the proxy's, as they always
// did, so that existing deployments keep working.
func (s securityConfig) separateScrapeTLS() bool {
	return s.scrapeTLSGiven
}

// validateSecurity reports the first security setting that cannot work.
func (c config) validateSecurity() error {
	s := c.security
	if (s.proxyUsername == "") != (s.proxyPasswordFile == "") {
		return errors.New("--proxy.username and --proxy.password-file must be given together")
	}
	if s.proxyUsername != "" {
		for _, u := range c.proxyURLs {
			if u.User != nil {
				return fmt.Errorf("--proxy-url %s has credentials and --proxy.username is given: give them once", u.Redacted())
			}
		}
	}
	if (s.scrapeCertFile == "") != (s.scrapeKeyFile == "") {
		return errors.New("--scrape.tls.cert and --scrape.tls.key must be given together")
	}
	if err := web.Validate(s.webConfigFile); err != nil {
		return fmt.Errorf("--web.config.file: %w", util.OneLine(err))
	}
	return nil
}

// newTransports returns the transport towards the proxies, which adds the
// proxy credentials, and the one towards the targets, each with its own TLS
// settings.
func newTransports(cfg config, logger log.Logger) (toProxy http.RoundTripper, toTarget *http.Transport, err error) {
	for _, u := range cfg.proxyURLs {
		if u.Scheme == "http" && (u.User != nil || cfg.security.proxyUsername != "") {
			level.Warn(logger).Log("msg", "proxy credentials cross the network in clear text: use an https proxy URL", "proxy", u.Redacted())
		}
	}
	proxyTLS, err := newTLSConfig(cfg.caFile, cfg.certFile, cfg.keyFile, cfg.insecureSkipVerify)
	if err != nil {
		return nil, nil, err
	}
	var targetTLS *tls.Config
	if s := cfg.security; s.separateScrapeTLS() {
		targetTLS, err = newTLSConfig(s.scrapeCAFile, s.scrapeCertFile, s.scrapeKeyFile, s.scrapeInsecureSkipVerify)
		if err != nil {
			return nil, nil, fmt.Errorf("--scrape.tls.*: %w", err)
		}
	} else {
		targetTLS = proxyTLS.Clone()
	}
	proxyTransport := newTransport(proxyTLS)
	toProxy = proxyTransport
	if cfg.security.proxyUsername != "" {
		toProxy = &basicAuthTransport{next: proxyTransport, username: cfg.security.proxyUsername, passwordFile: cfg.security.proxyPasswordFile}
	}
	return toProxy, newTransport(targetTLS), nil
}

// basicAuthTransport authenticates each request to the proxy with the
// --proxy.username and the password in --proxy.password-file. Credentials
// in a --proxy-url need no transport: net/http sends them itself.
type basicAuthTransport struct {
	next         *http.Transport
	username     string
	passwordFile string
}

// RoundTrip implements http.RoundTripper.
func (t *basicAuthTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The file is read each time, so that a rotated password is used at
	// once; it is small and requests are few.
	password, err := os.ReadFile(t.passwordFile)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("reading --proxy.password-file: %w", err)
	}
	req = req.Clone(req.Context())
	req.SetBasicAuth(t.username, strings.TrimSpace(string(password)))
	return t.next.RoundTrip(req)
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// wrapped transport.
func (t *basicAuthTransport) CloseIdleConnections() {
	t.next.CloseIdleConnections()
}
