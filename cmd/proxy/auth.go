package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	config_util "github.com/prometheus/common/config"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sync/singleflight"
)

// authRealm names the proxy in authentication challenges.
const authRealm = `Basic realm="pushprox", charset="UTF-8"`

// unknownUserHash is checked for a user that does not exist, so that the
// time a refusal takes does not tell which users exist. It is the exporter
// toolkit's bcrypt hash of "fakepassword".
const unknownUserHash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"

// maxCachedLogins bounds the remembered password checks, successful and
// failed each.
const maxCachedLogins = 1024

// maxConcurrentBcrypt bounds the bcrypt comparisons that run at once: each
// takes tens of milliseconds of CPU, and a flood of logins must leave CPU
// for scrapes. A few slots, rather than one, let a correct login through
// while others are being checked.
const maxConcurrentBcrypt = 4

// validateSecurity checks the security flags; it reads the web config file.
func (c config) validateSecurity() error {
	if c.bindFQDNToCert && c.webConfigFile == "" {
		return errors.New("--auth.bind-fqdn-to-cert needs --web.config.file with a tls_server_config that verifies client certificates")
	}
	if c.webConfigFile == "" {
		return nil
	}
	raw, err := os.ReadFile(c.webConfigFile)
	if err != nil {
		return fmt.Errorf("--web.config.file: %w", err)
	}
	state, err := parseWebConfig(c.webConfigFile, raw)
	if err != nil {
		return fmt.Errorf("--web.config.file: %w", err)
	}
	if clientAuth := state.config.TLSConfig.ClientAuth; c.bindFQDNToCert &&
		clientAuth != "RequireAndVerifyClientCert" && clientAuth != "VerifyClientCertIfGiven" {
		return errors.New("--auth.bind-fqdn-to-cert needs client_auth_type RequireAndVerifyClientCert or VerifyClientCertIfGiven in --web.config.file")
	}
	return nil
}

// security applies --web.config.file to the proxy's listener: TLS, client
// certificate verification and basic authentication. Without the file it
// lets every request through over plain HTTP.
type security struct {
	file    *webConfigFile // nil without --web.config.file
	tls     bool           // whether the listener serves TLS, fixed at start
	logger  log.Logger
	refused *prometheus.CounterVec

	// bcryptSlots bounds the bcrypt comparisons running at once; cached
	// and shared checks do not take a slot.
	bcryptSlots chan struct{}
	// bcryptRuns counts bcrypt comparisons, so tests can see the cache work.
	bcryptRuns atomic.Int64

	loginsMu sync.Mutex
	// logins and failures hold digests of user, hash and password of
	// recent successful and failed checks; guarded by loginsMu.
	logins, failures map[[sha256.Size]byte]struct{}
	// checking makes the same credentials sent many times at once cost one
	// comparison.
	checking singleflight.Group
}

// newSecurity reads the web config file named by cfg, if any.
func newSecurity(cfg config, logger log.Logger, reg prometheus.Registerer) (*security, error) {
	s := &security{
		logger:      logger,
		bcryptSlots: make(chan struct{}, maxConcurrentBcrypt),
		logins:      map[[sha256.Size]byte]struct{}{},
		failures:    map[[sha256.Size]byte]struct{}{},
	}
	if cfg.webConfigFile == "" {
		return s, nil
	}
	file, err := openWebConfigFile(cfg.webConfigFile, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("--web.config.file: %w", err)
	}
	s.file = file
	s.tls = file.current().config.TLSConfig.IsEnabled()
	s.refused = promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "pushprox_proxy_auth_failures_total",
		Help: "Requests refused for missing or wrong credentials, by endpoint (proxy for Prometheus' scrapes).",
	}, []string{"endpoint"})
	for _, endpoint := range []string{"proxy", "/poll", "/push", "/clients", "/metrics", "other"} {
		s.refused.WithLabelValues(endpoint)
	}
	users := len(file.current().config.Users)
	level.Info(logger).Log("msg", "web config loaded", "file", cfg.webConfigFile, "tls", s.tls, "basic_auth_users", users)
	if users > 0 && !s.tls {
		level.Warn(logger).Log("msg", "basic_auth_users without tls_server_config: passwords cross the network in clear text", "file", cfg.webConfigFile)
	}
	return s, nil
}

// configure sets srv up for TLS when the web config says so. Switching
// TLS on or off takes a restart; everything else is re-read as it changes.
func (s *security) configure(srv *http.Server) {
	if !s.tls {
		return
	}
	// Prometheus names a scrape's target in an absolute-form request
	// target, which only HTTP/1.1 carries: the proxy never offers HTTP/2.
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	srv.TLSConfig = &tls.Config{
		NextProtos:         []string{"http/1.1"},
		GetConfigForClient: s.file.tlsConfig,
	}
}

// serve serves srv, set up by configure, on ln.
func (s *security) serve(srv *http.Server, ln net.Listener) error {
	if !s.tls {
		return srv.Serve(ln)
	}
	return srv.ServeTLS(ln, "", "")
}

// authUserKey is the request context key of the user whose password the
// proxy checked.
type authUserKey struct{}

// certRequiredKey is the request context key set when the web config
// requires every client to present a certificate.
type certRequiredKey struct{}

// authenticated says whether the proxy knows who sent r: a checked
// password, a verified client certificate, or one the web config requires.
// Registrations of unauthenticated requests are rate limited per source.
func authenticated(r *http.Request) bool {
	if _, ok := r.Context().Value(authUserKey{}).(string); ok {
		return true
	}
	required, _ := r.Context().Value(certRequiredKey{}).(bool)
	return required || verifiedLeaf(r) != nil
}

// authOnly returns a request with only what authenticated and
// authorizePoll read of r: its TLS state, peer address and checked
// credentials, to be kept for as long as a tunnel lasts without the rest
// of the request.
func authOnly(r *http.Request) *http.Request {
	ctx := context.Background()
	if user, ok := r.Context().Value(authUserKey{}).(string); ok {
		ctx = context.WithValue(ctx, authUserKey{}, user)
	}
	if required, ok := r.Context().Value(certRequiredKey{}).(bool); ok {
		ctx = context.WithValue(ctx, certRequiredKey{}, required)
	}
	return (&http.Request{TLS: r.TLS, RemoteAddr: r.RemoteAddr}).WithContext(ctx)
}

// handler checks each request's credentials against basic_auth_users
// before next sees it. Prometheus authenticates as to any HTTP proxy, with
// Proxy-Authorization, and its Authorization header stays the target's;
// clients and other callers use Authorization. A verified client
// certificate is enough for /poll and /push; health probes need nothing, as
// orchestrators probe without credentials and the answers tell nothing.
// Refused requests get 407 or 401 and have no other effect.
func (s *security) handler(next http.Handler) http.Handler {
	if s.file == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		state := s.file.current()
		isProxy := r.URL.Host != "" || r.Method == http.MethodConnect
		if !isProxy {
			// Headers such as HSTS are for the proxy's own pages, not for
			// the targets' answers.
			for name, value := range state.config.HTTPConfig.Header {
				w.Header().Set(name, value)
			}
		}
		if state.limiter != nil && !state.limiter.Allow() {
			http.Error(w, http.StatusText(http.StatusTooManyRequests), http.StatusTooManyRequests)
			return
		}
		users := state.config.Users
		if len(users) == 0 || isHealthProbe(r) {
			if requires, _ := clientCertChecks(state.config.TLSConfig.ClientAuth); requires {
				r = r.WithContext(context.WithValue(r.Context(), certRequiredKey{}, true))
			}
			next.ServeHTTP(w, r)
			return
		}
		credentials := r.Header.Get("Authorization")
		if isProxy {
			credentials = r.Header.Get("Proxy-Authorization")
		}
		if user, ok := s.checkPassword(users, credentials); ok {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), authUserKey{}, user)))
			return
		}
		if !isProxy && (r.URL.Path == "/poll" || r.URL.Path == "/push" || r.URL.Path == "/tunnel") && verifiedLeaf(r) != nil {
			next.ServeHTTP(w, r)
			return
		}
		endpoint := "other"
		switch {
		case isProxy:
			endpoint = "proxy"
		case r.URL.Path == "/poll", r.URL.Path == "/push", r.URL.Path == "/clients", r.URL.Path == "/metrics":
			endpoint = r.URL.Path
		}
		s.refused.WithLabelValues(endpoint).Inc()
		reason := "no credentials"
		if credentials != "" {
			reason = "wrong credentials"
		}
		level.Debug(s.logger).Log("msg", "request refused", "endpoint", endpoint, "remote", r.RemoteAddr, "err", reason)
		if isProxy {
			w.Header().Set("Proxy-Authenticate", authRealm)
			http.Error(w, "proxy authentication required: "+reason+" in Proxy-Authorization (put them in Prometheus' proxy_url)", http.StatusProxyAuthRequired)
			return
		}
		w.Header().Set("WWW-Authenticate", authRealm)
		http.Error(w, "unauthorized: "+reason, http.StatusUnauthorized)
	})
}

// isHealthProbe reports whether r asks for /-/healthy or /-/ready.
func isHealthProbe(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		r.URL.Host == "" && (r.URL.Path == "/-/healthy" || r.URL.Path == "/-/ready")
}

// checkPassword checks basic credentials against users, whose passwords are
// bcrypt hashes, and returns the user. Checks are remembered, failed ones
// too, and the same credentials checked at once share one comparison:
// clients or a Prometheus retrying with a stale password cost one bcrypt,
// not one per request, and cannot delay a correct login behind them.
// Different wrong passwords (guessing) still cost one comparison each, at
// most maxConcurrentBcrypt at once; the web config's rate_limit bounds
// them further.
func (s *security) checkPassword(users map[string]config_util.Secret, credentials string) (string, bool) {
	if credentials == "" {
		return "", false
	}
	user, password, ok := (&http.Request{Header: http.Header{"Authorization": {credentials}}}).BasicAuth()
	if !ok {
		return "", false
	}
	hash, known := users[user]
	if !known {
		hash = unknownUserHash
	}
	// The digest covers the hash, so that a changed password in the web
	// config file invalidates what was remembered.
	key := sha256.Sum256([]byte(strings.Join([]string{
		hex.EncodeToString([]byte(user)), hex.EncodeToString([]byte(hash)), hex.EncodeToString([]byte(password)),
	}, ":")))
	s.loginsMu.Lock()
	_, remembered := s.logins[key]
	_, failed := s.failures[key]
	s.loginsMu.Unlock()
	switch {
	case remembered && known:
		return user, true
	case failed:
		return "", false
	}
	matched, _, _ := s.checking.Do(string(key[:]), func() (any, error) {
		s.bcryptSlots <- struct{}{}
		s.bcryptRuns.Add(1)
		err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
		<-s.bcryptSlots
		ok := err == nil && known
		s.loginsMu.Lock()
		remember := s.failures
		if ok {
			remember = s.logins
		}
		if len(remember) >= maxCachedLogins {
			clear(remember)
		}
		remember[key] = struct{}{}
		s.loginsMu.Unlock()
		return ok, nil
	})
	if !matched.(bool) {
		return "", false
	}
	return user, true
}

// verifiedLeaf returns the client certificate of r if it was verified
// against the web config's client CAs.
func verifiedLeaf(r *http.Request) *x509.Certificate {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return nil
	}
	return r.TLS.VerifiedChains[0][0]
}

// requestIdentity names who made r, as far as the proxy has verified it: a
// verified client certificate by its issuer, subject and names; else the
// user whose password was checked; else the key of an unverified client
// certificate, whose possession TLS proves. A scrape may be pushed only by
// the identity its poll had. Without any authentication it is "", and the
// scrape's Id, a random UUID sent only in the answer to that poll, is what
// binds the push to the poll.
func requestIdentity(r *http.Request) string {
	if leaf := verifiedLeaf(r); leaf != nil {
		names := append([]string(nil), leaf.DNSNames...)
		for _, ip := range leaf.IPAddresses {
			names = append(names, ip.String())
		}
		sort.Strings(names)
		return fmt.Sprintf("%sissuer=%s subject=%s names=%s", identityCert, leaf.Issuer, leaf.Subject, strings.Join(names, ","))
	}
	if user, ok := r.Context().Value(authUserKey{}).(string); ok {
		return identityUser + user
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		digest := sha256.Sum256(r.TLS.PeerCertificates[0].RawSubjectPublicKeyInfo)
		return "key:" + hex.EncodeToString(digest[:])
	}
	return ""
}

// Prefixes of the identities requestIdentity returns for a request the
// proxy authenticated: a verified client certificate, a checked password.
const (
	identityCert = "cert:"
	identityUser = "user:"
)

// authenticatedIdentity says whether an identity requestIdentity returned
// is of an authenticated request.
func authenticatedIdentity(identity string) bool {
	return strings.HasPrefix(identity, identityCert) || strings.HasPrefix(identity, identityUser)
}

// authorizePoll says why the client of r may not poll as fqdn. With
// --auth.bind-fqdn-to-cert, a client answers only for the names its
// verified certificate holds (DNS or IP SANs, or the subject's CN).
func (p *proxy) authorizePoll(r *http.Request, fqdn string) error {
	if !p.cfg.bindFQDNToCert {
		return nil
	}
	leaf := verifiedLeaf(r)
	if leaf == nil {
		return fmt.Errorf("polling as %q needs a verified client certificate that names it (--auth.bind-fqdn-to-cert)", fqdn)
	}
	name := strings.TrimSuffix(fqdn, ".")
	if leaf.VerifyHostname(name) == nil || strings.EqualFold(strings.TrimSuffix(leaf.Subject.CommonName, "."), name) {
		return nil
	}
	return fmt.Errorf("client certificate %q does not name %q (--auth.bind-fqdn-to-cert)", leaf.Subject.CommonName, fqdn)
}
