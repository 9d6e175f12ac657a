// Command pushprox-client lets Prometheus scrape this machine through a
// pushprox-proxy: it polls the proxy for scrapes, makes them and pushes the
// answers back.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/util"
)

// Bounds of the client's own start and stop.
const (
	// fqdnLookupTimeout bounds the look-ups of this host's name at start:
	// without DNS, the host name is used at once.
	fqdnLookupTimeout = 2 * time.Second
	// metricsReadHeaderTimeout bounds reading a request head on the
	// metrics listener, so that idle connections cannot pile up.
	metricsReadHeaderTimeout = 10 * time.Second
	// metricsShutdownTimeout bounds the graceful stop of the metrics
	// listener after polling stopped.
	metricsShutdownTimeout = 5 * time.Second
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// config is the client's configuration, as given by its flags.
type config struct {
	fqdn                 string
	fqdnFound            bool // fqdn was found, not given
	proxyURLs            []*url.URL
	caFile               string
	certFile             string
	keyFile              string
	insecureSkipVerify   bool
	metricsAddress       string
	tokenPath            string
	useLocalhost         bool
	allowPort            string
	retryInitialWait     time.Duration
	retryMaxWait         time.Duration
	pollWait             time.Duration
	maxConcurrentScrapes int
	proxyResolveAll      bool
	transport            string
	tunnelPingInterval   time.Duration
	shutdownTimeout      time.Duration
	// maxProcs is the client's GOMAXPROCS; 0 leaves Go's choice.
	maxProcs        int
	resolveInterval time.Duration // how often --proxy.resolve-all resolves; zero means defaultResolveInterval; not a flag
	refuseTimeout   time.Duration // bounds sending a scrape error; zero means defaultRefuseTimeout; not a flag
	pollBodyMargin  time.Duration // added to the poll wait to bound a poll answer's body; zero means defaultPollBodyMargin; not a flag
	labels          map[string]string
	targetsFile     string
	targetsMax      int
	targetsRefresh  time.Duration
	logLevel        string
	logFormat       string
	security        securityConfig
}

// validate reports the first setting that cannot work.
func (c config) validate() error {
	if _, err := util.ParseFQDN(c.fqdn); err != nil {
		return fmt.Errorf("--fqdn: %w", err)
	}
	if len(c.proxyURLs) == 0 {
		return errors.New("--proxy-url is required")
	}
	if c.allowPort != "*" {
		if port, err := strconv.ParseUint(c.allowPort, 10, 16); err != nil || port == 0 {
			return fmt.Errorf("--allow-port must be a port number or *, not %q", c.allowPort)
		}
	}
	if c.useLocalhost && c.allowPort == "*" {
		return errors.New("--use-localhost needs --allow-port to name the one port that may be scraped")
	}
	switch {
	case c.retryInitialWait <= 0:
		return errors.New("--proxy.retry.initial-wait must be positive")
	case c.retryMaxWait < c.retryInitialWait:
		return errors.New("--proxy.retry.max-wait must not be shorter than --proxy.retry.initial-wait")
	case c.pollWait < 0:
		return errors.New("--proxy.poll-wait must not be negative")
	case c.pollWait > 0 && c.pollWait < time.Second:
		return errors.New("--proxy.poll-wait must be 0 or at least 1s")
	case c.tunnelPingInterval <= 0:
		return errors.New("--tunnel.ping-interval must be positive")
	case c.maxConcurrentScrapes < 1:
		return errors.New("--scrape.max-concurrency must be at least 1")
	case c.shutdownTimeout < 0:
		return errors.New("--web.shutdown-timeout must not be negative")
	case c.maxProcs < 0:
		return errors.New("--runtime.gomaxprocs must not be negative")
	case c.targetsMax < 1:
		return errors.New("--targets.max must be at least 1")
	case c.targetsRefresh <= 0:
		return errors.New("--targets.file.refresh-interval must be positive")
	}
	if c.targetsFile != "" {
		if err := checkTargetsFileName(c.targetsFile); err != nil {
			return err
		}
	}
	return c.validateSecurity()
}

// parseFlags parses args into a config. A nil config and no error mean that
// --help was given and answered.
func parseFlags(args []string, stderr io.Writer) (*config, error) {
	app := util.NewApp("pushprox-client", "Client that lets Prometheus scrape this machine through a pushprox-proxy.", stderr)

	var cfg config
	var proxyURLs, labels []string
	app.Flag("fqdn", "Name this client registers as; scrapes for other names are refused. Defaults to this host's FQDN.").
		StringVar(&cfg.fqdn)
	app.Flag("proxy-url", "Base URL of the proxy; /poll and /push resolve against it; repeatable (in the environment, one per line).").
		Required().StringsVar(&proxyURLs)
	app.Flag("tls.cacert", "CA certificate file to verify the proxy, and HTTPS targets unless a --scrape.tls.* flag is given.").
		ExistingFileVar(&cfg.caFile)
	app.Flag("tls.cert", "Client certificate file.").ExistingFileVar(&cfg.certFile)
	app.Flag("tls.key", "Client certificate's key file.").ExistingFileVar(&cfg.keyFile)
	app.Flag("insecure-skip-verify", "Skip TLS certificate verification.").BoolVar(&cfg.insecureSkipVerify)
	app.Flag("metrics-addr", "Address to serve the client's own metrics on.").
		Default(":9369").StringVar(&cfg.metricsAddress)
	app.Flag("token-path", "File holding a bearer token sent with every scrape, which is then made over HTTPS; read on each scrape.").
		StringVar(&cfg.tokenPath)
	app.Flag("use-localhost", "Scrape 127.0.0.1 instead of the FQDN; needs --allow-port.").
		BoolVar(&cfg.useLocalhost)
	app.Flag("allow-port", "The only target port that may be scraped; * allows any.").
		Default("*").StringVar(&cfg.allowPort)
	app.Flag("proxy.retry.initial-wait", "First wait after a failed poll.").
		Default("1s").DurationVar(&cfg.retryInitialWait)
	app.Flag("proxy.retry.max-wait", "Longest wait between failed polls.").
		Default("5s").DurationVar(&cfg.retryMaxWait)
	app.Flag("proxy.poll-wait", "How long the proxy may hold a poll without work (sent as Prefer: wait); keep it under the idle timeout of load balancers in between; 0 lets the proxy hold it forever.").
		Default("30s").DurationVar(&cfg.pollWait)
	app.Flag("scrape.max-concurrency", "Most scrapes served at once.").
		Default("16").IntVar(&cfg.maxConcurrentScrapes)
	app.Flag("proxy.transport", "How to reach the proxy: tunnel (one multiplexed connection), poll (long polls, as the reference client), or auto (a tunnel where the proxy offers one, polls otherwise).").
		Default(transportAuto).EnumVar(&cfg.transport, transportAuto, transportTunnel, transportPoll)
	app.Flag("tunnel.ping-interval", "How often the client pings its tunnel; keep it well under the idle timeout of load balancers in between. A dead tunnel is noticed within about two intervals.").
		Default("15s").DurationVar(&cfg.tunnelPingInterval)
	app.Flag("proxy.resolve-all", "Poll every address each --proxy-url's host resolves to (proxy replicas behind a Kubernetes headless Service), resolving again every 30s.").
		BoolVar(&cfg.proxyResolveAll)
	app.Flag("label", "Label name=value announced to the proxy for service discovery; repeatable (in the environment, one per line).").
		StringsVar(&labels)
	app.Flag("targets.file", "File of host:port targets the client also answers for, each with its labels, in Prometheus' file_sd format (JSON or YAML by extension); re-read when it changes and on SIGHUP.").
		StringVar(&cfg.targetsFile)
	app.Flag("targets.max", "Most targets the targets file may list; each is a poll loop per proxy on the poll transport, and an entry the proxy keeps.").
		Default("1024").IntVar(&cfg.targetsMax)
	app.Flag("targets.file.refresh-interval", "How often the targets file is checked for changes.").
		Default("5s").DurationVar(&cfg.targetsRefresh)
	app.Flag("web.shutdown-timeout", "How long a stopping client waits for scrapes in flight before cancelling them.").
		Default("15s").DurationVar(&cfg.shutdownTimeout)
	var maxProcsSet bool
	maxProcsFlag := app.Flag("runtime.gomaxprocs", "How many threads run the client's Go code at once (GOMAXPROCS); 0 leaves it to Go (all CPUs the client may use). One by default: a client spends its time handing scrapes between goroutines, which on one thread costs no wake-up of another, and about a sixth less CPU per scrape. Unless given, a GOMAXPROCS environment variable is obeyed instead.").
		Default("1").IsSetByUser(&maxProcsSet)
	maxProcsFlag.IntVar(&cfg.maxProcs)
	app.LogFlags(&cfg.logLevel, &cfg.logFormat)
	addSecurityFlags(app.Application, &cfg.security)

	answered, err := app.Parse(args)
	if answered || err != nil {
		return nil, err
	}
	for _, raw := range proxyURLs {
		u, err := util.ParseProxyURL(raw)
		if err != nil {
			return nil, fmt.Errorf("--proxy-url: %w", err)
		}
		cfg.proxyURLs = append(cfg.proxyURLs, u)
	}
	for _, pair := range labels {
		name, value, err := util.ParseLabel(pair)
		if err != nil {
			return nil, fmt.Errorf("--label: %w", err)
		}
		if cfg.labels == nil {
			cfg.labels = map[string]string{}
		}
		cfg.labels[name] = value
	}
	if len(cfg.labels) > util.MaxLabels {
		return nil, fmt.Errorf("--label: %d labels, at most %d allowed", len(cfg.labels), util.MaxLabels)
	}
	if n := len(util.EncodeLabels(cfg.labels)); n > util.MaxLabelsBytes {
		return nil, fmt.Errorf("--label: labels take %d bytes encoded, at most %d allowed", n, util.MaxLabelsBytes)
	}
	if cfg.fqdn == "" {
		cfg.fqdn, cfg.fqdnFound = hostFQDN(net.DefaultResolver), true
	}
	// The flag's own environment variable counts as giving it.
	if !maxProcsSet && os.Getenv(maxProcsFlag.Model().Envar) == "" && os.Getenv("GOMAXPROCS") != "" {
		cfg.maxProcs = 0
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// hostFQDN returns the name this host registers as by default, found as
// the reference client finds it, so that a client put in its place keeps
// its name: the host name's first IPv4 address resolved back to a name,
// without a trailing dot; the host name itself when a step fails.
func hostFQDN(resolver hostResolver) string {
	host, err := os.Hostname()
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), fqdnLookupTimeout)
	defer cancel()
	return reverseName(ctx, resolver, host)
}

// isLoopbackName reports whether name is localhost or a loopback address.
func isLoopbackName(name string) bool {
	if addr, err := netip.ParseAddr(name); err == nil {
		return addr.IsLoopback()
	}
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	return name == "localhost" || strings.HasSuffix(name, ".localhost") || strings.HasPrefix(name, "localhost.")
}

// hostResolver is what hostFQDN asks of DNS (and /etc/hosts); a
// *net.Resolver is one.
type hostResolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupAddr(ctx context.Context, addr string) ([]string, error)
}

// reverseName returns the first name of host's first IPv4 address, or
// host when there is none.
func reverseName(ctx context.Context, resolver hostResolver, host string) string {
	addrs, err := resolver.LookupIPAddr(ctx, host)
	if err != nil {
		return host
	}
	for _, addr := range addrs {
		if addr.IP.To4() == nil {
			continue
		}
		names, err := resolver.LookupAddr(ctx, addr.IP.String())
		if err != nil || len(names) == 0 || strings.TrimSuffix(names[0], ".") == "" {
			return host
		}
		return strings.TrimSuffix(names[0], ".")
	}
	return host
}

func run(args []string, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "pushprox-client: %v\n", err)
		return 2
	}
	if cfg == nil {
		return 0
	}
	logger, err := util.NewLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "pushprox-client: %v\n", err)
		return 2
	}
	if cfg.fqdnFound && isLoopbackName(cfg.fqdn) {
		level.Warn(logger).Log("msg", "this host's name resolves to a loopback name, which the client registers as, as the reference client would: clients on other hosts may share it; give --fqdn", "fqdn", cfg.fqdn)
	}
	if cfg.maxProcs > 0 {
		runtime.GOMAXPROCS(cfg.maxProcs)
	}
	reg := util.NewRegistry()
	c, err := newClient(*cfg, logger, reg)
	if err != nil {
		fmt.Fprintf(stderr, "pushprox-client: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopReloading := util.OnSIGHUP(ctx, logger, c.reload)
	defer stopReloading()
	ln, err := net.Listen("tcp", cfg.metricsAddress)
	if err != nil {
		level.Error(logger).Log("msg", "cannot listen for metrics", "address", cfg.metricsAddress, "err", err)
		return 1
	}
	metricsServer := &http.Server{
		Handler:           c.metricsHandler(reg),
		ReadHeaderTimeout: metricsReadHeaderTimeout,
		ErrorLog:          stdlog.New(log.NewStdlibAdapter(level.Debug(logger)), "", 0),
	}
	served := make(chan error, 1)
	go func() { served <- serveMetrics(metricsServer, ln, cfg.security.webConfigFile, logger) }()

	level.Info(logger).Log("msg", "polling", "fqdn", cfg.fqdn, "proxies", fmt.Sprint(redacted(cfg.proxyURLs)), "metrics_address", ln.Addr().String(), "gomaxprocs", runtime.GOMAXPROCS(0))
	c.Run(ctx)
	level.Info(logger).Log("msg", "stopped polling; scrapes in flight finished")

	shutdownCtx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
	defer cancel()
	if err := metricsServer.Shutdown(shutdownCtx); err != nil {
		metricsServer.Close()
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		level.Error(logger).Log("msg", "metrics server failed", "err", err)
		return 1
	}
	return 0
}

// redacted renders URLs without their passwords.
func redacted(urls []*url.URL) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = u.Redacted()
	}
	return out
}
