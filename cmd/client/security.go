package main

import (
	"errors"
	"fmt"

	"github.com/alecthomas/kingpin/v2"
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
	app.Flag("scrape.allow", "Target HOST:PORT/PATH the proxy may ask for, each part a glob (e.g. '*:9100/metrics'); HOST is the host the proxy asks for, also under --use-localhost. Repeatable (in the environment, one per line). When given, every other target is refused.").
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
	if err := validateWebConfig(s.webConfigFile); err != nil {
		return fmt.Errorf("--web.config.file: %w", err)
	}
	return nil
}

// validateWebConfig checks the metrics listener's web config file as the
// exporter toolkit reads it.
func validateWebConfig(path string) error {
	if err := web.Validate(path); err != nil {
		return util.OneLine(err)
	}
	return nil
}
