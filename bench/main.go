// Command bench measures PushProx against a direct scrape on loopback: it
// starts the real pushprox-proxy and pushprox-client binaries and a target
// (this tool again, in a process of its own), plays Prometheus, and prints
// one markdown table.
//
//	go run ./bench --proxy=./pushprox-proxy --client=./pushprox-client
//
// Scenarios:
//  1. small payload, many clients, concurrent scrapers: latency and rate;
//  2. large payload, sequential scrapes: time per scrape and peak memory;
//  3. many idle clients (simulated in-process) parked on the proxy: memory
//     and goroutines per client, then scrapes spread over them.
//
// flood: a registration flood while a real client is scraped (flood.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	proxyPath  string
	clientPath string
	scenarios  string
	target     targetOptions
	timeout    time.Duration
	transport  string // the clients' --proxy.transport

	smallSize        int
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

func main() {
	var o options
	flag.StringVar(&o.proxyPath, "proxy", "./pushprox-proxy", "path of the pushprox-proxy binary")
	flag.StringVar(&o.clientPath, "client", "./pushprox-client", "path of the pushprox-client binary")
	flag.StringVar(&o.scenarios, "scenarios", "1,2,3,flood", "scenarios to run, comma separated")
	flag.StringVar(&o.transport, "client.transport", "auto", "the clients' --proxy.transport: auto, tunnel or poll")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "the longest the whole run may take")
	flag.IntVar(&o.smallSize, "small.size", 2048, "scenario 1: payload size in bytes")
	flag.IntVar(&o.smallClients, "small.clients", 50, "scenario 1: client processes")
	flag.IntVar(&o.smallConcurrency, "small.concurrency", 8, "scenario 1: concurrent scrapers")
	flag.IntVar(&o.smallScrapes, "small.scrapes", 4000, "scenario 1: scrapes measured, each way")
	flag.IntVar(&o.smallSequential, "small.sequential", 1000, "scenario 1: scrapes measured with one scraper, each way")
	flag.Int64Var(&o.largeSize, "large.size", 50<<20, "scenario 2: payload size in bytes")
	flag.IntVar(&o.largeScrapes, "large.scrapes", 5, "scenario 2: scrapes measured, each way")
	flag.IntVar(&o.idleClients, "idle.clients", 10000, "scenario 3: simulated idle clients")
	flag.IntVar(&o.idleScrapes, "idle.scrapes", 2000, "scenario 3: scrapes spread over the idle clients")
	flag.IntVar(&o.idleConcurrency, "idle.concurrency", 8, "scenario 3: concurrent scrapers")
	flag.IntVar(&o.idlePayload, "idle.size", 2048, "scenario 3: payload size in bytes")
	floodFlags(&o.flood)
	serveTargetSize := flag.Int64("serve-target", 0, "internal: run as the target process, serving this many bytes")
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

func run(o options) int {
	for _, path := range []string{o.proxyPath, o.clientPath} {
		if _, err := os.Stat(path); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v (run make build, or give --proxy and --client)\n", err)
			return 2
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	var t table
	failed := false
	scenarios := map[string]func(context.Context, options, *table) error{
		"1": smallScenario,
		"2": largeScenario,
		"3": idleScenario,

		"flood": floodScenario,
	}
	for _, name := range strings.Split(o.scenarios, ",") {
		name = strings.TrimSpace(name)
		scenario, ok := scenarios[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q\n", name)
			return 2
		}
		logf("scenario %s", name)
		if err := scenario(ctx, o, &t); err != nil {
			fmt.Fprintf(os.Stderr, "bench: scenario %s: %v\n", name, err)
			failed = true
		}
		stopAll(false)
	}
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

// waitParked waits until the proxy has n polls parked.
// waitParked waits until n clients are connected: a poll parked or a
// tunnel attached each.
func waitParked(ctx context.Context, addr string, n int, limit time.Duration) error {
	return waitFor(ctx, limit, fmt.Sprintf("%d parked polls or tunnels", n), func() (bool, error) {
		m, err := proxyMetrics(ctx, addr, "pushprox_proxy_parked_polls", "pushprox_proxy_tunnels")
		if err != nil {
			return false, err
		}
		return m["pushprox_proxy_parked_polls"]+m["pushprox_proxy_tunnels"] >= float64(n), nil
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

// per renders the use per scrape of n scrapes, in unit (1e6 for µs, 1e3
// for ms).
func (u cpuUse) per(n int, unit float64, name string) string {
	if n == 0 {
		return ""
	}
	f := func(s float64) float64 { return unit * s / float64(n) }
	parts := fmt.Sprintf("Prometheus %.0f, target %.0f", f(u.tool), f(u.target))
	// Idle processes use a little; below a tenth of the total it is noise.
	if u.proxy+u.clients > u.total()/10 {
		parts += fmt.Sprintf(", proxy %.0f, client %.0f", f(u.proxy), f(u.clients))
	}
	return fmt.Sprintf("%.0f %s (%s)", f(u.total()), name, parts)
}

// cpuMeter reads the CPU time used so far by the tool, the target, the
// proxy and the clients. With an in-process target, the tool's time counts
// as the target's.
type cpuMeter struct {
	target  int
	proxy   int
	clients []int
}

func (m cpuMeter) read() cpuUse {
	u := cpuUse{target: cpuOf(m.target), proxy: cpuOf(m.proxy), clients: cpuOf(m.clients...)}
	if m.target != os.Getpid() {
		u.tool = cpuOf(0)
	}
	return u
}

// cpuOf sums the CPU seconds used so far by the given processes; pid 0 is
// the tool itself.
func cpuOf(pids ...int) float64 {
	total := 0.0
	for _, pid := range pids {
		if pid == 0 {
			pid = os.Getpid()
		}
		if s, err := cpuSeconds(pid); err == nil {
			total += s
		}
	}
	return total
}

// smallScenario: small payload, many client processes, concurrent
// scrapers, through the proxy and directly, alternating.
func smallScenario(ctx context.Context, o options, t *table) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	tgt, err := startTarget(int64(o.smallSize), o.target)
	if err != nil {
		return err
	}
	defer tgt.close()
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return err
	}
	clientPids := make([]int, 0, o.smallClients)
	for i := range o.smallClients {
		c, err := startClient(o.clientPath, addr, fmt.Sprintf("c%d", i), tgt.port, o.transport)
		if err != nil {
			return err
		}
		clientPids = append(clientPids, c.pid())
	}
	if err := waitParked(ctx, addr, o.smallClients, time.Minute); err != nil {
		return fmt.Errorf("%w\nproxy:\n%s", err, proxy.output())
	}
	const timeout = 10 * time.Second
	viaProxy := scraper(addr, 2*o.smallConcurrency, timeout+5*time.Second)
	direct := scraper("", 2*o.smallConcurrency, timeout+5*time.Second)
	proxiedURL := func(i int) string {
		return fmt.Sprintf("http://c%d:%d/metrics", i%o.smallClients, tgt.port)
	}
	directURL := func(int) string { return fmt.Sprintf("http://127.0.0.1:%d/metrics", tgt.port) }
	size := int64(o.smallSize)

	// Warm up connections in every process, then alternate halves so that
	// neither way is favoured by running first.
	warm := max(4*o.smallClients, 200)
	logf("small: %d clients parked, warming up", o.smallClients)
	if err := runLoad(ctx, viaProxy, warm, o.smallConcurrency, proxiedURL, timeout, size).check("warm-up via proxy"); err != nil {
		return err
	}
	if err := runLoad(ctx, direct, warm, o.smallConcurrency, directURL, timeout, size).check("warm-up direct"); err != nil {
		return err
	}
	cpu := cpuMeter{target: tgt.pid(), proxy: proxy.pid(), clients: clientPids}
	// measure runs rounds alternating direct and proxied scrapes, count
	// of each in all, with the given number of scrapers.
	measure := func(count, concurrency int) (proxied, straight loadResult, cpuProxied, cpuDirect cpuUse, err error) {
		const rounds = 2
		for round := range rounds {
			logf("small: %d scrapers, round %d of %d: %d scrapes direct, %d via proxy", concurrency, round+1, rounds, count/rounds, count/rounds)
			for _, way := range []struct {
				client *http.Client
				urlFor func(int) string
				into   *loadResult
				cpu    *cpuUse
			}{{direct, directURL, &straight, &cpuDirect}, {viaProxy, proxiedURL, &proxied, &cpuProxied}} {
				before := cpu.read()
				r := runLoad(ctx, way.client, count/rounds, concurrency, way.urlFor, timeout, size)
				way.cpu.add(cpu.read().sub(before))
				way.into.latencies = append(way.into.latencies, r.latencies...)
				way.into.elapsed += r.elapsed
				if err := r.check("scrapes"); err != nil {
					return proxied, straight, cpuProxied, cpuDirect, err
				}
			}
		}
		return proxied, straight, cpuProxied, cpuDirect, nil
	}
	proxied, straight, cpuProxied, cpuDirect, err := measure(o.smallScrapes, o.smallConcurrency)
	if err != nil {
		return err
	}
	scenario := fmt.Sprintf("1. %s payload, %d clients, %d scrapers (%d scrapes each way)%s",
		sizeString(int64(o.smallSize)), o.smallClients, o.smallConcurrency, len(proxied.latencies), o.target.note())
	p50p, p50d := proxied.percentile(50), straight.percentile(50)
	p99p, p99d := proxied.percentile(99), straight.percentile(99)
	t.add(row{scenario, "p50 latency", ms(p50p), ms(p50d), ratio(p50p.Seconds(), p50d.Seconds()), "≤ 2× direct", met(p50p.Seconds() <= 2*p50d.Seconds())})
	t.add(row{scenario, "p99 latency", ms(p99p), ms(p99d), ratio(p99p.Seconds(), p99d.Seconds()), "", ""})
	rp, rd := proxied.rate(), straight.rate()
	t.add(row{scenario, "scrapes/s", fmt.Sprintf("%.0f", rp), fmt.Sprintf("%.0f", rd), ratio(rp, rd), "≥ 0.5× direct", met(rp >= 0.5*rd)})
	t.add(row{scenario, "CPU per scrape", cpuProxied.per(len(proxied.latencies), 1e6, "µs"), cpuDirect.per(len(straight.latencies), 1e6, "µs"),
		ratio(cpuProxied.total()/float64(len(proxied.latencies)), cpuDirect.total()/float64(len(straight.latencies))), "", ""})

	if hwm, err := procStatus(proxy.pid(), "VmHWM"); err == nil {
		t.add(row{scenario, "proxy peak RSS (VmHWM)", sizeString(hwm), "", "", "", ""})
	}
	var clientHWM int64
	for _, pid := range clientPids {
		if hwm, err := procStatus(pid, "VmHWM"); err == nil {
			clientHWM = max(clientHWM, hwm)
		}
	}
	t.add(row{scenario, "client peak RSS (VmHWM), largest", sizeString(clientHWM), "", "", "", ""})

	// The same with one scraper: the latency of the extra hops alone,
	// without scrapes competing for the two cores.
	proxied, straight, _, _, err = measure(o.smallSequential, 1)
	if err != nil {
		return err
	}
	sequential := fmt.Sprintf("1b. same, 1 scraper (%d scrapes each way)", len(proxied.latencies))
	p50p, p50d = proxied.percentile(50), straight.percentile(50)
	p99p, p99d = proxied.percentile(99), straight.percentile(99)
	t.add(row{sequential, "p50 latency", ms(p50p), ms(p50d), ratio(p50p.Seconds(), p50d.Seconds()), "", ""})
	t.add(row{sequential, "p99 latency", ms(p99p), ms(p99d), ratio(p99p.Seconds(), p99d.Seconds()), "", ""})
	rp, rd = proxied.rate(), straight.rate()
	t.add(row{sequential, "scrapes/s", fmt.Sprintf("%.0f", rp), fmt.Sprintf("%.0f", rd), ratio(rp, rd), "", ""})
	return nil
}

// largeScenario: a large payload, one client, sequential scrapes through
// the proxy and directly, alternating; then the peak RSS of both processes.
func largeScenario(ctx context.Context, o options, t *table) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	tgt, err := startTarget(o.largeSize, o.target)
	if err != nil {
		return err
	}
	defer tgt.close()
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return err
	}
	client, err := startClient(o.clientPath, addr, "big", tgt.port, o.transport)
	if err != nil {
		return err
	}
	if err := waitParked(ctx, addr, 1, 30*time.Second); err != nil {
		return fmt.Errorf("%w\nproxy:\n%s\nclient:\n%s", err, proxy.output(), client.output())
	}
	const timeout = 60 * time.Second
	viaProxy := scraper(addr, 2, timeout+5*time.Second)
	direct := scraper("", 2, timeout+5*time.Second)
	proxiedURL := fmt.Sprintf("http://big:%d/metrics", tgt.port)
	directURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", tgt.port)
	once := func(client *http.Client, url string) (time.Duration, error) {
		start := time.Now()
		err := scrapeOnce(ctx, client, url, timeout, o.largeSize)
		return time.Since(start), err
	}
	logf("large: warming up")
	if _, err := once(viaProxy, proxiedURL); err != nil {
		return fmt.Errorf("warm-up via proxy: %w", err)
	}
	if _, err := once(direct, directURL); err != nil {
		return fmt.Errorf("warm-up direct: %w", err)
	}
	var proxied, straight []time.Duration
	var cpuProxied, cpuDirect cpuUse
	cpu := cpuMeter{target: tgt.pid(), proxy: proxy.pid(), clients: []int{client.pid()}}
	for i := range o.largeScrapes {
		logf("large: scrape %d of %d each way", i+1, o.largeScrapes)
		before := cpu.read()
		d, err := once(direct, directURL)
		if err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		between := cpu.read()
		cpuDirect.add(between.sub(before))
		straight = append(straight, d)
		p, err := once(viaProxy, proxiedURL)
		if err != nil {
			return fmt.Errorf("via proxy: %w\nproxy:\n%s\nclient:\n%s", err, proxy.output(), client.output())
		}
		cpuProxied.add(cpu.read().sub(between))
		proxied = append(proxied, p)
	}
	mp, err := median(proxied)
	if err != nil {
		return err
	}
	md, err := median(straight)
	if err != nil {
		return err
	}
	scenario := fmt.Sprintf("2. %s payload, sequential (median of %d)%s", sizeString(o.largeSize), o.largeScrapes, o.target.note())
	t.add(row{scenario, "seconds per scrape", secs(mp), secs(md), ratio(mp.Seconds(), md.Seconds()), "≤ 1.5× direct", met(mp.Seconds() <= 1.5*md.Seconds())})
	mbps := func(d time.Duration) string {
		return fmt.Sprintf("%.0f MiB/s", float64(o.largeSize)/(1<<20)/d.Seconds())
	}
	t.add(row{scenario, "throughput", mbps(mp), mbps(md), ratio(md.Seconds(), mp.Seconds()), "", ""})
	t.add(row{scenario, "CPU per scrape", cpuProxied.per(o.largeScrapes, 1e3, "ms"), cpuDirect.per(o.largeScrapes, 1e3, "ms"), ratio(cpuProxied.total(), cpuDirect.total()), "", ""})
	const limit = 40 << 20
	for _, c := range []*child{proxy, client} {
		hwm, err := procStatus(c.pid(), "VmHWM")
		if err != nil {
			return err
		}
		name := "proxy"
		if c == client {
			name = "client"
		}
		t.add(row{scenario, name + " peak RSS (VmHWM)", sizeString(hwm), "", "", "< 40 MiB", met(hwm < limit)})
	}
	return nil
}

// idleScenario: many simulated clients parked on the proxy; memory and
// goroutines per client; then scrapes spread over them at random.
func idleScenario(ctx context.Context, o options, t *table) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	n := o.idleClients
	note := ""
	// Each simulated client holds a descriptor in the tool and one in the
	// proxy, and a loopback port.
	limit, err := raiseFileLimit()
	if err != nil {
		return fmt.Errorf("raising the open file limit: %w", err)
	}
	ports, err := ephemeralPorts()
	if err != nil {
		return err
	}
	if most := min(int(limit), ports) - 1000; n > most {
		note = fmt.Sprintf(" (scaled down from %d: open file limit %d, %d ports)", n, limit, ports)
		n = max(most, 1)
	}
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return err
	}
	stats := []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"}
	// The first scrape of /metrics allocates; measure after the second.
	if _, err := proxyMetrics(ctx, addr, stats...); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	before, err := proxyMetrics(ctx, addr, stats...)
	if err != nil {
		return err
	}
	rssBefore, err := procStatus(proxy.pid(), "VmRSS")
	if err != nil {
		return err
	}

	fctx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	f := &fleet{proxyAddr: addr, body: payload(o.idlePayload)}
	dialing := make(chan struct{}, 128)
	logf("idle: parking %d simulated clients", n)
	start := time.Now()
	for i := range n {
		f.start(fctx, fmt.Sprintf("idle-%05d", i), dialing)
	}
	err = waitFor(ctx, 2*time.Minute, fmt.Sprintf("%d parked polls", n), func() (bool, error) {
		if err := f.err(); err != nil {
			return false, err
		}
		m, err := proxyMetrics(ctx, addr, "pushprox_proxy_parked_polls")
		if err != nil {
			return false, err
		}
		return m["pushprox_proxy_parked_polls"] >= float64(n), nil
	})
	if err != nil {
		return err
	}
	parkTime := time.Since(start)
	time.Sleep(time.Second)
	after, err := proxyMetrics(ctx, addr, stats...)
	if err != nil {
		return err
	}
	rssAfter, err := procStatus(proxy.pid(), "VmRSS")
	if err != nil {
		return err
	}
	perClient := float64(rssAfter-rssBefore) / float64(n)
	goroutines := (after["go_goroutines"] - before["go_goroutines"]) / float64(n)
	heap := (after["go_memstats_heap_inuse_bytes"] - before["go_memstats_heap_inuse_bytes"]) / float64(n)
	stack := (after["go_memstats_stack_inuse_bytes"] - before["go_memstats_stack_inuse_bytes"]) / float64(n)
	scenario := fmt.Sprintf("3. %d idle clients parked%s", n, note)
	t.add(row{scenario, "proxy RSS per parked client", fmt.Sprintf("%.1f KiB", perClient/1024), "", "", "< 24 KiB", met(perClient < 24<<10)})
	t.add(row{scenario, "  of which Go heap / stacks", fmt.Sprintf("%.1f / %.1f KiB", heap/1024, stack/1024), "", "", "", ""})
	t.add(row{scenario, "proxy goroutines per parked client", fmt.Sprintf("%.2f", goroutines), "", "", "", ""})
	t.add(row{scenario, "proxy RSS, all parked", sizeString(rssAfter), "", "", "", ""})
	t.add(row{scenario, "time to park all", secs(parkTime), "", "", "", ""})

	// Scrapes spread over the parked clients at random (the same draw on
	// every run).
	rng := rand.New(rand.NewPCG(1, 2))
	picks := make([]int, o.idleScrapes)
	for i := range picks {
		picks[i] = rng.IntN(n)
	}
	const timeout = 10 * time.Second
	viaProxy := scraper(addr, 2*o.idleConcurrency, timeout+5*time.Second)
	logf("idle: %d scrapes spread over them", o.idleScrapes)
	cpuBefore := cpuOf(proxy.pid())
	r := runLoad(ctx, viaProxy, o.idleScrapes, o.idleConcurrency, func(i int) string {
		return fmt.Sprintf("http://idle-%05d:9100/metrics", picks[i])
	}, timeout, int64(o.idlePayload))
	cpuAfter := cpuOf(proxy.pid())
	if err := errors.Join(r.check("scrapes over idle clients"), f.err()); err != nil {
		return err
	}
	scrapes := fmt.Sprintf("3. %d scrapes over the %d parked clients, %d scrapers", o.idleScrapes, n, o.idleConcurrency)
	t.add(row{scrapes, "scrapes/s", fmt.Sprintf("%.0f", r.rate()), "", "", "", ""})
	t.add(row{scrapes, "p50 / p99 latency", ms(r.percentile(50)) + " / " + ms(r.percentile(99)), "", "", "", ""})
	t.add(row{scrapes, "proxy CPU per scrape", fmt.Sprintf("%.0f µs", 1e6*(cpuAfter-cpuBefore)/float64(len(r.latencies))), "", "", "", ""})
	if hwm, err := procStatus(proxy.pid(), "VmHWM"); err == nil {
		// Scrapes leave garbage; the Go collector lets the heap grow to
		// twice the live heap (GOGC=100) before collecting it.
		t.add(row{scrapes, "proxy peak RSS (VmHWM), per parked client", fmt.Sprintf("%s, %.1f KiB", sizeString(hwm), float64(hwm-rssBefore)/float64(n)/1024), "", "", "", ""})
	}
	// A simulated client counts its push when it has read the proxy's
	// answer, which may come after Prometheus has its own.
	want := int64(len(r.latencies))
	if err := waitFor(ctx, 10*time.Second, "the simulated clients' push answers", func() (bool, error) {
		return f.served.Load() >= want, nil
	}); err != nil {
		return fmt.Errorf("simulated clients pushed %d answers for %d scrapes: %w", f.served.Load(), want, err)
	}

	stopFleet()
	if err := f.wait(30 * time.Second); err != nil {
		return err
	}
	proxy.stop()
	return nil
}

// row is one line of the result table.
type row struct {
	scenario, metric, proxied, direct, ratio, target, met string
}

// table is the result table.
type table struct{ rows []row }

func (t *table) add(r row) { t.rows = append(t.rows, r) }

func (t *table) print(w *os.File) {
	fmt.Fprintln(w, "| scenario | metric | via proxy | direct | ratio | target | met? |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	last := ""
	for _, r := range t.rows {
		scenario := r.scenario
		if scenario == last {
			scenario = ""
		}
		last = r.scenario
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", scenario, r.metric, r.proxied, dash(r.direct), dash(r.ratio), dash(r.target), r.met)
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

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
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
