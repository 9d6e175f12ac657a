package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// todayPollIdleBytes is the proxy RSS per parked poll before the tunnel
// (docs/performance.md, "Results" of 25 November 2026: 22.0 KiB per parked
// client with 10 000 parked). Issue 11 wants idle memory per connected
// client, on either transport, at least 10 % below it.
const (
	todayPollIdleBytes = 22.0 * 1024
	idleTargetFactor   = 0.9
)

// idleResult is what one fleet of idle clients measured.
type idleResult struct {
	perClient   float64 // proxy RSS per connected client, bytes
	heap, stack float64 // Go heap and stacks per connected client, bytes
	goroutines  float64 // proxy goroutines per connected client
	rss         int64   // proxy RSS with all connected
	connectTime time.Duration
	scrapes     loadResult
	scrapeCPU   float64 // proxy CPU seconds over the scrapes
	peakPer     float64 // proxy peak RSS per client after the scrapes, bytes
	peak        int64
}

// idleScenario: many simulated idle clients connected to the proxy, first
// polling, then on tunnels; memory and goroutines per client; then scrapes
// spread over them at random.
//
// Each fleet gets a proxy of its own, started after the previous one has
// stopped, so that neither fleet exists next to the other and the second
// is not measured on a heap the first grew and the runtime has not yet
// given back.
func idleScenario(ctx context.Context, o options, t *table) error {
	// Two fleets of 10 000 connect and serve their scrapes in well under a
	// minute each on two cores.
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
	// The tool and the proxy need some descriptors and ports of their own.
	const spare = 1000
	if most := min(int(limit), ports) - spare; n > most {
		note = fmt.Sprintf(" (scaled down from %d: open file limit %d, %d ports)", n, limit, ports)
		n = max(most, 1)
	}
	var res [wayCount]idleResult
	for _, w := range []int{wayPoll, wayTunnel} {
		r, err := idleFleet(ctx, o, n, w == wayTunnel)
		if err != nil {
			return err
		}
		res[w] = r
	}
	p, tu := res[wayPoll], res[wayTunnel]
	label := fmt.Sprintf("3. %d idle clients connected, per transport%s", n, note)
	kib := func(b float64) string { return fmt.Sprintf("%.1f KiB", b/1024) }
	goal := idleTargetFactor * todayPollIdleBytes
	t.add(row{scenario: label, metric: "proxy RSS per connected client", poll: kib(p.perClient), tunnel: kib(tu.perClient), vs: ratio(tu.perClient, p.perClient),
		target: fmt.Sprintf("≤ %s (%.1f× today's %s per parked poll)", kib(goal), idleTargetFactor, kib(todayPollIdleBytes)),
		met:    metEach(p.perClient <= goal, tu.perClient <= goal)})
	t.add(row{scenario: label, metric: "  of which Go heap / stacks", poll: kib(p.heap) + " / " + kib(p.stack), tunnel: kib(tu.heap) + " / " + kib(tu.stack)})
	t.add(row{scenario: label, metric: "proxy goroutines per connected client", poll: fmt.Sprintf("%.2f", p.goroutines), tunnel: fmt.Sprintf("%.2f", tu.goroutines), vs: ratio(tu.goroutines, p.goroutines)})
	t.add(row{scenario: label, metric: "proxy RSS, all connected", poll: sizeString(p.rss), tunnel: sizeString(tu.rss), vs: ratio(float64(tu.rss), float64(p.rss))})
	t.add(row{scenario: label, metric: "time to connect all", poll: secs(p.connectTime), tunnel: secs(tu.connectTime), vs: ratio(tu.connectTime.Seconds(), p.connectTime.Seconds())})

	scrapes := fmt.Sprintf("3. %d scrapes over the %d idle clients, %d scrapers", o.idleScrapes, n, o.idleConcurrency)
	rp, rt := p.scrapes.rate(), tu.scrapes.rate()
	t.add(row{scenario: scrapes, metric: "scrapes/s", poll: fmt.Sprintf("%.0f", rp), tunnel: fmt.Sprintf("%.0f", rt), vs: ratio(rt, rp)})
	t.add(row{scenario: scrapes, metric: "p50 / p99 latency",
		poll:   ms(p.scrapes.percentile(50)) + " / " + ms(p.scrapes.percentile(99)),
		tunnel: ms(tu.scrapes.percentile(50)) + " / " + ms(tu.scrapes.percentile(99)),
		vs:     ratio(tu.scrapes.percentile(50).Seconds(), p.scrapes.percentile(50).Seconds())})
	cp, ct := p.scrapeCPU/float64(len(p.scrapes.latencies)), tu.scrapeCPU/float64(len(tu.scrapes.latencies))
	t.add(row{scenario: scrapes, metric: "proxy CPU per scrape", poll: us(cp), tunnel: us(ct), vs: ratio(ct, cp)})
	// Scrapes leave garbage; the Go collector lets the heap grow to twice
	// the live heap (GOGC=100) before collecting it.
	t.add(row{scenario: scrapes, metric: "proxy peak RSS (VmHWM), per connected client",
		poll: fmt.Sprintf("%s, %s", sizeString(p.peak), kib(p.peakPer)), tunnel: fmt.Sprintf("%s, %s", sizeString(tu.peak), kib(tu.peakPer)),
		vs: ratio(tu.peakPer, p.peakPer)})
	return nil
}

// idleFleet runs n simulated clients of one transport against a proxy of
// their own, measures the proxy, scrapes through them, and stops both.
func idleFleet(ctx context.Context, o options, n int, tunnel bool) (idleResult, error) {
	var res idleResult
	kind := "poll"
	if tunnel {
		kind = "tunnel"
	}
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return res, err
	}
	defer proxy.stop()
	stats := []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes"}
	// The first scrape of /metrics allocates; measure after the second.
	if _, err := proxyMetrics(ctx, addr, stats...); err != nil {
		return res, err
	}
	time.Sleep(500 * time.Millisecond)
	before, err := proxyMetrics(ctx, addr, stats...)
	if err != nil {
		return res, err
	}
	rssBefore, err := procStatus(proxy.pid(), "VmRSS")
	if err != nil {
		return res, err
	}

	fctx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	f := &fleet{proxyAddr: addr, body: payload(o.idlePayload), tunnel: tunnel}
	// At most this many connections are being opened at once, so that the
	// proxy's accept queue does not overflow.
	const dialingAtOnce = 128
	dialing := make(chan struct{}, dialingAtOnce)
	logf("idle: connecting %d simulated %s clients", n, kind)
	start := time.Now()
	for i := range n {
		f.start(fctx, fmt.Sprintf("idle-%05d", i), dialing)
	}
	polls, tunnels := n, 0
	if tunnel {
		polls, tunnels = 0, n
	}
	// Connecting takes seconds; two minutes means something is wrong.
	err = waitFor(ctx, 2*time.Minute, fmt.Sprintf("%d %s clients connected", n, kind), func() (bool, error) {
		if err := f.err(); err != nil {
			return false, err
		}
		m, err := proxyMetrics(ctx, addr, "pushprox_proxy_parked_polls", "pushprox_proxy_tunnels")
		if err != nil {
			return false, err
		}
		return m["pushprox_proxy_parked_polls"] >= float64(polls) && m["pushprox_proxy_tunnels"] >= float64(tunnels), nil
	})
	if err != nil {
		return res, fmt.Errorf("%w\nproxy:\n%s", err, proxy.output())
	}
	res.connectTime = time.Since(start)
	// Let the connections' first allocations settle.
	time.Sleep(time.Second)
	after, err := proxyMetrics(ctx, addr, stats...)
	if err != nil {
		return res, err
	}
	if res.rss, err = procStatus(proxy.pid(), "VmRSS"); err != nil {
		return res, err
	}
	res.perClient = float64(res.rss-rssBefore) / float64(n)
	res.goroutines = (after["go_goroutines"] - before["go_goroutines"]) / float64(n)
	res.heap = (after["go_memstats_heap_inuse_bytes"] - before["go_memstats_heap_inuse_bytes"]) / float64(n)
	res.stack = (after["go_memstats_stack_inuse_bytes"] - before["go_memstats_stack_inuse_bytes"]) / float64(n)

	// Scrapes spread over the clients at random (the same draw on every
	// run and for both transports).
	rng := rand.New(rand.NewPCG(1, 2))
	picks := make([]int, o.idleScrapes)
	for i := range picks {
		picks[i] = rng.IntN(n)
	}
	const timeout = 10 * time.Second
	viaProxy := scraper(addr, 2*o.idleConcurrency, timeout+5*time.Second)
	logf("idle: %d scrapes spread over the %s clients", o.idleScrapes, kind)
	cpuBefore := cpuOf(proxy.pid())
	res.scrapes = runLoad(ctx, viaProxy, o.idleScrapes, o.idleConcurrency, func(i int) string {
		return fmt.Sprintf("http://idle-%05d:9100/metrics", picks[i])
	}, timeout, int64(o.idlePayload))
	res.scrapeCPU = cpuOf(proxy.pid()) - cpuBefore
	if err := errors.Join(res.scrapes.check("scrapes over idle "+kind+" clients"), f.err()); err != nil {
		return res, err
	}
	if res.peak, err = procStatus(proxy.pid(), "VmHWM"); err != nil {
		return res, err
	}
	res.peakPer = float64(res.peak-rssBefore) / float64(n)
	// A simulated client counts its answer when it has sent it (a tunnel)
	// or read the proxy's answer to its push (a poll), which may come after
	// Prometheus has its own.
	want := int64(len(res.scrapes.latencies))
	if err := waitFor(ctx, 10*time.Second, "the simulated clients' answers", func() (bool, error) {
		return f.served.Load() >= want, nil
	}); err != nil {
		return res, fmt.Errorf("simulated clients answered %d of %d scrapes: %w", f.served.Load(), want, err)
	}

	stopFleet()
	// Closing 10 000 connections takes well under a second.
	if err := f.wait(30 * time.Second); err != nil {
		return res, err
	}
	return res, nil
}
