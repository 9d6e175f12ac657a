// Command bench measures PushProx against a direct scrape on loopback: it
// starts the real pushprox-proxy and pushprox-client binaries and a target
// (this tool again, in a process of its own), plays Prometheus, and prints
// one markdown table comparing a direct scrape, scrapes through the proxy
// to clients that poll, and scrapes to clients on a tunnel; given a
// reference PushProx's binaries, the small scenario measures them too.
//
//	go run ./bench --proxy=./pushprox-proxy --client=./pushprox-client
//	go run ./bench --scenarios=small --reference.proxy=REF/proxy --reference.client=REF/client
//
// Scenarios (by name, or by their old number):
//  1. small: small payloads, client processes on both transports,
//     concurrent scrapers, the three ways in interleaved rounds: latency,
//     rate and CPU per scrape of every process;
//  2. large: a large payload, sequential scrapes the three ways: time per
//     scrape, CPU and peak memory;
//  3. idle: many idle clients simulated in-process, first polling, then on
//     tunnels, each fleet on a proxy of its own: memory and goroutines per
//     connected client, then scrapes spread over them;
//  4. flood: a registration flood while a real client is scraped
//     (flood.go): the proxy's peak memory, /clients and the real client.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	proxyPath  string
	clientPath string
	scenarios  string
	target     targetOptions
	reference  referenceOptions
	timeout    time.Duration

	smallSizes       []int
	smallClients     int
	smallConcurrency int
	smallScrapes     int
	smallSequential  int

	largeSize    int64
	largeScrapes int

	idleClients     int
	idleScrapes     int
	idleConcurrency int
	idlePayload     int

	flood floodOptions
}

// The ways of scraping, as indexes of every per-way result.
const (
	wayDirect = iota
	wayPoll
	wayTunnel
	wayCount
)

// scenario is one named part of a run.
type scenario struct {
	name   string
	number string // the number it had before scenarios had names
	run    func(context.Context, options, *table) error
}

// allScenarios lists the scenarios in the order they run; adding one is
// one line here.
func allScenarios() []scenario {
	return []scenario{
		{"small", "1", smallScenario},
		{"large", "2", largeScenario},
		{"idle", "3", idleScenario},
		{"flood", "4", floodScenario},
	}
}

func main() {
	var o options
	smallSizes := "2048,65536"
	flag.StringVar(&o.proxyPath, "proxy", "./pushprox-proxy", "path of the pushprox-proxy binary")
	flag.StringVar(&o.clientPath, "client", "./pushprox-client", "path of the pushprox-client binary")
	flag.StringVar(&o.scenarios, "scenarios", "small,large,idle,flood", "scenarios to run, comma separated, by name or number (1 small, 2 large, 3 idle, 4 flood)")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "the longest the whole run may take")
	flag.StringVar(&smallSizes, "small.sizes", smallSizes, "small: payload sizes in bytes, comma separated")
	flag.IntVar(&o.smallClients, "small.clients", 8, "small: client processes per transport")
	flag.IntVar(&o.smallConcurrency, "small.concurrency", 8, "small: concurrent scrapers")
	flag.IntVar(&o.smallScrapes, "small.scrapes", 6000, "small: scrapes measured per size, each way")
	flag.IntVar(&o.smallSequential, "small.sequential", 900, "small: scrapes measured per size with one scraper, each way")
	flag.Int64Var(&o.largeSize, "large.size", 20<<20, "large: payload size in bytes")
	flag.IntVar(&o.largeScrapes, "large.scrapes", 5, "large: scrapes measured, each way")
	flag.IntVar(&o.idleClients, "idle.clients", 10000, "idle: simulated idle clients, per transport")
	flag.IntVar(&o.idleScrapes, "idle.scrapes", 2000, "idle: scrapes spread over the idle clients, per transport")
	flag.IntVar(&o.idleConcurrency, "idle.concurrency", 8, "idle: concurrent scrapers")
	flag.IntVar(&o.idlePayload, "idle.size", 2048, "idle: payload size in bytes")
	floodFlags(&o.flood)
	serveTargetSize := flag.Int64("serve-target", 0, "internal: run as the target process, serving this many bytes unless a scrape asks for another size")
	flag.StringVar(&o.reference.proxyPath, "reference.proxy", "", "small: a reference pushprox proxy binary, measured as a fourth way with --reference.client")
	flag.StringVar(&o.reference.clientPath, "reference.client", "", "small: a reference pushprox client binary; it must take the Rancher fork's --use-localhost and --allow-port")
	flag.BoolVar(&o.target.inProcess, "target.in-process", false, "serve the target inside the tool instead of in a process of its own")
	flag.BoolVar(&o.target.chunked, "target.chunked", false, "the target answers without a Content-Length (chunked), as most exporters do")
	flag.Parse()
	if *serveTargetSize > 0 {
		if err := serveTarget(*serveTargetSize, o.target.chunked); err != nil {
			fmt.Fprintf(os.Stderr, "bench target: %v\n", err)
			os.Exit(1)
		}
		return
	}
	sizes, err := parseSizes(smallSizes)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: --small.sizes: %v\n", err)
		os.Exit(2)
	}
	o.smallSizes = sizes
	if err := o.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(2)
	}

	// Children die with the tool: on a signal, stop them and leave; on a
	// panic or a normal return, the deferred stopAll does it, and
	// Pdeathsig covers a crash.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-signals
		fmt.Fprintf(os.Stderr, "bench: %v, stopping the proxy and clients\n", sig)
		stopAll(true)
		os.Exit(130)
	}()

	code := func() int {
		defer stopAll(true)
		return run(o)
	}()
	os.Exit(code)
}

// parseSizes parses a comma-separated list of positive byte counts.
func parseSizes(list string) ([]int, error) {
	var sizes []int
	for _, field := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n <= 0 || n > maxServedSize {
			return nil, fmt.Errorf("%q is not a size from 1 to %d bytes", field, maxServedSize)
		}
		sizes = append(sizes, n)
	}
	return sizes, nil
}

// validate refuses counts that would leave a way without scrapes.
func (o options) validate() error {
	switch {
	case o.smallClients < 1 || o.smallConcurrency < 1 || o.idleClients < 1 || o.idleConcurrency < 1:
		return errors.New("client and scraper counts must be at least 1")
	case o.smallScrapes < o.smallRounds() || o.smallSequential < o.smallRounds():
		return fmt.Errorf("--small.scrapes and --small.sequential must be at least %d, one per round", o.smallRounds())
	case o.largeScrapes < 1 || o.idleScrapes < 1:
		return errors.New("--large.scrapes and --idle.scrapes must be at least 1")
	case o.largeSize < 1 || o.largeSize > maxServedSize || o.idlePayload < 1:
		return fmt.Errorf("payload sizes must be from 1 to %d bytes", maxServedSize)
	}
	return o.reference.validate()
}

func run(o options) int {
	for _, path := range []string{o.proxyPath, o.clientPath} {
		if _, err := os.Stat(path); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v (run make build, or give --proxy and --client)\n", err)
			return 2
		}
	}
	// Every name is checked before anything runs.
	var chosen []scenario
	for _, name := range strings.Split(o.scenarios, ",") {
		name = strings.TrimSpace(name)
		found := false
		for _, s := range allScenarios() {
			if name == s.name || name == s.number {
				chosen = append(chosen, s)
				found = true
			}
		}
		if !found {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q\n", name)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	var t table
	failed := false
	start := time.Now()
	for _, s := range chosen {
		logf("scenario %s", s.name)
		if err := s.run(ctx, o, &t); err != nil {
			fmt.Fprintf(os.Stderr, "bench: scenario %s: %v\n", s.name, err)
			failed = true
		}
		stopAll(false)
	}
	logf("done in %s", time.Since(start).Round(time.Second))
	fmt.Printf("Machine: %d CPUs (%s), %s %s/%s, loopback\n\n", runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	t.print(os.Stdout)
	if failed {
		return 1
	}
	return 0
}

// logf reports progress on standard error; the table goes to standard
// output.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// waitConnected waits until the proxy has at least polls parked polls and
// tunnels tunnels attached.
func waitConnected(ctx context.Context, addr string, polls, tunnels int, limit time.Duration) error {
	return waitFor(ctx, limit, fmt.Sprintf("%d parked polls and %d tunnels", polls, tunnels), func() (bool, error) {
		m, err := proxyMetrics(ctx, addr, "pushprox_proxy_parked_polls", "pushprox_proxy_tunnels")
		if err != nil {
			return false, err
		}
		return m["pushprox_proxy_parked_polls"] >= float64(polls) && m["pushprox_proxy_tunnels"] >= float64(tunnels), nil
	})
}

// cpuUse is CPU time, in seconds, of the tool (Prometheus), the target,
// the proxy and the clients.
type cpuUse struct{ tool, target, proxy, clients float64 }

func (u cpuUse) sub(v cpuUse) cpuUse {
	return cpuUse{u.tool - v.tool, u.target - v.target, u.proxy - v.proxy, u.clients - v.clients}
}

func (u *cpuUse) add(v cpuUse) {
	u.tool += v.tool
	u.target += v.target
	u.proxy += v.proxy
	u.clients += v.clients
}

func (u cpuUse) total() float64 { return u.tool + u.target + u.proxy + u.clients }

// cpuMeter reads the CPU time used so far by the tool, the target, the
// proxy and the clients taking part in a way of scraping; a direct scrape
// has no proxy (pid 0) and no clients. With an in-process target, the
// tool's time counts as the target's.
type cpuMeter struct {
	target  int
	proxy   int
	clients []int
}

func (m cpuMeter) read() cpuUse {
	u := cpuUse{target: cpuOf(m.target), clients: cpuOf(m.clients...)}
	if m.proxy != 0 {
		u.proxy = cpuOf(m.proxy)
	}
	if m.target != os.Getpid() {
		u.tool = cpuOf(os.Getpid())
	}
	return u
}

// cpuOf sums the CPU seconds used so far by the given processes.
func cpuOf(pids ...int) float64 {
	total := 0.0
	for _, pid := range pids {
		if s, err := cpuSeconds(pid); err == nil {
			total += s
		}
	}
	return total
}

// row is one line of the result table: a value for each way of scraping
// (empty when the way has none), the tunnel's ratio to polls, and the
// target the row is held to.
type row struct {
	scenario, metric     string
	direct, poll, tunnel string
	vs                   string // tunnel ÷ poll
	target, met          string
	// reference is the value of a reference PushProx, when one was
	// measured, and vsReference the tunnel's ratio to it.
	reference, vsReference string
}

// table is the result table.
type table struct{ rows []row }

func (t *table) add(r row) { t.rows = append(t.rows, r) }

// print writes the table; the reference's columns are there only when a
// row has a reference value.
func (t *table) print(w *os.File) {
	withReference := slices.ContainsFunc(t.rows, func(r row) bool { return r.reference != "" })
	head, rule := "| scenario | metric | direct | poll | tunnel | tunnel ÷ poll | target | met? |", "|---|---|---|---|---|---|---|---|"
	if withReference {
		head += " reference | tunnel ÷ reference |"
		rule += "---|---|"
	}
	fmt.Fprintln(w, head)
	fmt.Fprintln(w, rule)
	last := ""
	for _, r := range t.rows {
		scenario := r.scenario
		if scenario == last {
			scenario = ""
		}
		last = r.scenario
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |",
			scenario, r.metric, dash(r.direct), dash(r.poll), dash(r.tunnel), dash(r.vs), dash(r.target), r.met)
		if withReference {
			fmt.Fprintf(w, " %s | %s |", dash(r.reference), dash(r.vsReference))
		}
		fmt.Fprintln(w)
	}
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }

func ratio(a, b float64) string {
	if b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// vsDirect appends a value's ratio to the direct scrape's, when there is
// one.
func vsDirect(text string, v, direct float64) string {
	if direct == 0 {
		return text
	}
	return fmt.Sprintf("%s (%.2f×)", text, v/direct)
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// metEach says whether each transport met a target.
func metEach(poll, tunnel bool) string {
	if poll && tunnel {
		return "yes"
	}
	return fmt.Sprintf("poll %s, tunnel %s", met(poll), met(tunnel))
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// readFileString returns the contents of a small file.
func readFileString(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", errors.New("reading " + path + ": " + err.Error())
	}
	return string(raw), nil
}

// cpuModel returns the CPU's model name from /proc/cpuinfo.
func cpuModel() string {
	raw, err := readFileString("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(raw, "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "unknown CPU"
}
