// Command pushprox-proxy lets Prometheus scrape targets it cannot reach:
// clients next to the targets poll it for scrapes and push the answers back.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// config is the proxy's configuration, as given by its flags.
type config struct {
	listenAddress       string
	maxTimeout          time.Duration
	defaultTimeout      time.Duration
	registrationTimeout time.Duration
	maxClients          int
	registrationRate    float64
	registrationBurst   int
	maxTargetsPerClient int
	maxPushBytes        int64
	shutdownTimeout     time.Duration
	logLevel            string
	logFormat           string
	webConfigFile       string
	bindFQDNToCert      bool
	tunnelPingInterval  time.Duration
	connectMaxPerClient int
	connectMaxTotal     int
	connectIdleTimeout  time.Duration

	// idleStreamMemory bounds what idle tunnel streams hold; zero means
	// defaultIdleStreamMemory; not a flag.
	idleStreamMemory int64
	// idleStreamTimeout is how long an idle tunnel stream is kept; zero
	// means defaultIdleStreamTimeout; not a flag.
	idleStreamTimeout time.Duration
	// clock tells the time for client registrations; nil means time.Now.
	// Tests replace it.
	clock func() time.Time
	// readHeaderTimeout bounds the time to read a request head; zero means
	// 10s. Not a flag; tests shorten it.
	readHeaderTimeout time.Duration
	// pollBodyTimeout bounds the time to read a poll body; zero means
	// bodyReadTimeout. Not a flag; tests shorten it.
	pollBodyTimeout time.Duration
}

// validate reports the first setting that cannot work.
func (c config) validate() error {
	switch {
	case c.maxTimeout <= 0:
		return errors.New("--scrape.max-timeout must be positive")
	case c.defaultTimeout <= 0:
		return errors.New("--scrape.default-timeout must be positive")
	case c.registrationTimeout <= 0:
		return errors.New("--registration.timeout must be positive")
	case c.maxClients <= 0:
		return errors.New("--registration.max-clients must be positive")
	case c.registrationRate < 0 || c.registrationBurst < 0:
		return errors.New("--registration.rate-per-source and --registration.burst-per-source must not be negative")
	case c.maxTargetsPerClient <= 0:
		return errors.New("--registration.max-targets-per-client must be positive")
	case c.maxPushBytes <= 0:
		return errors.New("--push.max-body-size must be positive")
	case c.connectMaxPerClient <= 0 || c.connectMaxTotal <= 0:
		return errors.New("--connect.max-per-client and --connect.max-total must be positive")
	case c.connectIdleTimeout <= 0:
		return errors.New("--connect.idle-timeout must be positive")
	case c.tunnelPingInterval <= 0:
		return errors.New("--tunnel.ping-interval must be positive")
	case c.shutdownTimeout < 0:
		return errors.New("--web.shutdown-timeout must not be negative")
	}
	return c.validateSecurity()
}

// parseFlags parses args into a config. A nil config and no error mean that
// --help was given and answered.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	app := util.NewApp("pushprox-proxy", "Proxy for Prometheus scrapes of targets behind pushprox-client.", stderr)

	var cfg config
	app.Flag("web.listen-address", "Address to listen on for Prometheus, clients and metrics.").
		Default(":8080").StringVar(&cfg.listenAddress)
	app.Flag("scrape.max-timeout", "Longest timeout any scrape may have.").
		Default("5m").DurationVar(&cfg.maxTimeout)
	app.Flag("scrape.default-timeout", "Timeout of a scrape that names none.").
		Default("15s").DurationVar(&cfg.defaultTimeout)
	app.Flag("registration.timeout", "How long a client not heard from stays known.").
		Default("5m").DurationVar(&cfg.registrationTimeout)
	app.Flag("registration.max-clients", "Most clients (FQDN and label set) known at once; polls registering more get 429.").
		Default("100000").IntVar(&cfg.maxClients)
	// The defaults let a site of a thousand clients behind one address
	// register at once and a fleet of 10 000 within 90 s, while one
	// source cannot churn the registry faster than 100 clients a second.
	app.Flag("registration.rate-per-source", "New clients a second one source address (an IPv6 /64; all of a /48 four times that) may register while the proxy has no authentication; beyond its burst, polls and tunnels for new FQDNs get 429. Clients already registered are never limited. 0 turns the limit off.").
		Default("100").Float64Var(&cfg.registrationRate)
	app.Flag("registration.burst-per-source", "New clients one source address may register at once before --registration.rate-per-source applies. 0 turns the limit off.").
		Default("1000").IntVar(&cfg.registrationBurst)

	app.Flag("registration.max-targets-per-client", "Most targets one client may answer for from its targets file (each counts among --registration.max-clients); more are refused with the reason.").
		Default(strconv.Itoa(rendezvous.DefaultMaxTargetsPerClient)).IntVar(&cfg.maxTargetsPerClient)
	maxPushBytes := app.Flag("push.max-body-size", "Largest scrape answer a client may push (e.g. 512MiB).").
		Default("1GiB").Bytes()
	app.Flag("web.shutdown-timeout", "How long a stopping proxy waits for scrapes in flight.").
		Default("15s").DurationVar(&cfg.shutdownTimeout)
	app.Flag("tunnel.ping-interval", "How often the proxy pings each client tunnel; keep it well under the idle timeout of load balancers in between. A dead tunnel is noticed within about two intervals.").
		Default("15s").DurationVar(&cfg.tunnelPingInterval)
	app.Flag("connect.max-per-client", "Most CONNECT tunnels (scheme: https targets) open at once through one client.").
		Default("32").IntVar(&cfg.connectMaxPerClient)
	app.Flag("connect.max-total", "Most CONNECT tunnels open at once through the proxy.").
		Default("4096").IntVar(&cfg.connectMaxTotal)
	app.Flag("connect.idle-timeout", "How long a CONNECT tunnel may carry no byte either way before it is closed; keep it above the scrape interval so that Prometheus can reuse it.").
		Default("5m").DurationVar(&cfg.connectIdleTimeout)
	app.LogFlags(&cfg.logLevel, &cfg.logFormat)
	app.Flag("web.config.file", "Exporter-toolkit web config file for TLS, client certificate verification and basic-auth users; re-read when it changes.").
		ExistingFileVar(&cfg.webConfigFile)
	app.Flag("auth.bind-fqdn-to-cert", "Accept a poll for an FQDN only from a verified client certificate that names it.").
		BoolVar(&cfg.bindFQDNToCert)

	answered, err := app.Parse(args)
	if answered || err != nil {
		return nil, err
	}
	cfg.maxPushBytes = int64(*maxPushBytes)
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func run(args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "pushprox-proxy: %v\n", err)
		return 2
	}
	if cfg == nil {
		return 0
	}
	logger, err := util.NewLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "pushprox-proxy: %v\n", err)
		return 2
	}
	reg := util.NewRegistry()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// SIGHUP reloads once serving (security.reloadOnSIGHUP); until then it
	// must not end the proxy.
	signal.Ignore(syscall.SIGHUP)
	ln, err := listen(ctx, cfg.listenAddress)
	if err != nil {
		level.Error(logger).Log("msg", "cannot listen", "address", cfg.listenAddress, "err", err)
		return 1
	}
	level.Info(logger).Log("msg", "listening", "address", ln.Addr().String())
	if err := serve(ctx, *cfg, logger, reg, reg, ln); err != nil {
		level.Error(logger).Log("msg", "serving failed", "err", err)
		return 1
	}
	return 0
}

// listen opens a TCP listener whose connections notice a dead peer.
func listen(ctx context.Context, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAliveConfig: util.KeepAlive}
	return lc.Listen(ctx, "tcp", address)
}

// serve runs the proxy on ln until ctx ends, then stops gracefully: parked
// polls are answered, new scrapes refused, and scrapes already handed to
// clients may finish within the shutdown timeout.
func serve(ctx context.Context, cfg config, logger log.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer, ln net.Listener) error {
	sec, err := newSecurity(cfg, logger, reg)
	if err != nil {
		return err
	}
	defer sec.reloadOnSIGHUP(ctx)()
	p := newProxy(cfg, logger, reg, gatherer)
	defer p.close()
	srv := &http.Server{
		Handler:           sec.handler(p),
		ReadHeaderTimeout: cmp.Or(cfg.readHeaderTimeout, 10*time.Second),
		MaxHeaderBytes:    256 << 10,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          stdlog.New(log.NewStdlibAdapter(level.Debug(logger)), "", 0),
	}
	sec.configure(srv)
	// Connections of answered detached polls come back to srv, TLS and
	// all, through a listener of their own.
	resumed := make(chan error, 1)
	resumedPolls := p.detached.enable(srv)
	go func() { resumed <- srv.Serve(resumedPolls) }()
	defer func() { <-resumed }()
	served := make(chan error, 1)
	go func() { served <- sec.serve(srv, ln) }()
	select {
	case err := <-served:
		srv.Close()
		return err
	case <-ctx.Done():
	}
	level.Info(logger).Log("msg", "shutting down")
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := p.shutdown(graceCtx); err != nil {
		level.Warn(logger).Log("msg", "scrapes still in flight at the end of the shutdown timeout", "err", err)
	}
	if err := srv.Shutdown(graceCtx); err != nil {
		level.Warn(logger).Log("msg", "closing connections still busy at the end of the shutdown timeout", "err", err)
		srv.Close()
	}
	<-served
	level.Info(logger).Log("msg", "stopped")
	return nil
}
