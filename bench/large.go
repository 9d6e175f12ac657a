package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// largeScenario: a large payload, one client per transport, sequential
// scrapes directly, through polls and through a tunnel, the order rotating
// every scrape; then the peak RSS of every proxy and client.
//
// Each transport has a proxy of its own, so that each proxy's peak RSS is
// what one transport needed: a proxy serving both would show only the
// larger peak. An idle proxy costs nothing to the other's measurement.
func largeScenario(ctx context.Context, o options, t *table) error {
	// A 20 MiB scrape takes well under a second; even 50 MiB ones, six
	// each way, end within this.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	tgt, err := startTarget(o.largeSize, o.target)
	if err != nil {
		return err
	}
	defer tgt.close()
	const timeout = 60 * time.Second
	type largeWay struct {
		name          string
		prometheus    *http.Client // the scraper of this way
		url           string
		cpu           cpuMeter
		proxy, client *child // none for direct
		times         []time.Duration
		used          cpuUse
	}
	ways := [wayCount]*largeWay{wayDirect: {
		name:       "direct",
		prometheus: scraper("", 2, timeout+5*time.Second),
		url:        fmt.Sprintf("http://127.0.0.1:%d/metrics", tgt.port),
		cpu:        cpuMeter{target: tgt.pid()},
	}}
	for _, w := range []struct {
		way       int
		transport string
	}{{wayPoll, "poll"}, {wayTunnel, "tunnel"}} {
		proxy, addr, err := startProxy(o.proxyPath)
		if err != nil {
			return err
		}
		fqdn := "big-" + w.transport
		client, err := startClient(o.clientPath, addr, fqdn, tgt.port, w.transport)
		if err != nil {
			return err
		}
		polls, tunnels := 1, 0
		if w.way == wayTunnel {
			polls, tunnels = 0, 1
		}
		if err := waitConnected(ctx, addr, polls, tunnels, 30*time.Second); err != nil {
			return fmt.Errorf("%w\nproxy:\n%s\nclient:\n%s", err, proxy.output(), client.output())
		}
		ways[w.way] = &largeWay{
			name:       w.transport,
			prometheus: scraper(addr, 2, timeout+5*time.Second),
			url:        fmt.Sprintf("http://%s:%d/metrics", fqdn, tgt.port),
			cpu:        cpuMeter{target: tgt.pid(), proxy: proxy.pid(), clients: []int{client.pid()}},
			proxy:      proxy,
			client:     client,
		}
	}
	once := func(w *largeWay) (time.Duration, error) {
		start := time.Now()
		err := scrapeOnce(ctx, w.prometheus, w.url, timeout, o.largeSize)
		if err != nil && w.proxy != nil {
			err = fmt.Errorf("%s: %w\nproxy:\n%s\nclient:\n%s", w.name, err, w.proxy.output(), w.client.output())
		}
		return time.Since(start), err
	}
	logf("large: warming up")
	for _, w := range ways {
		if _, err := once(w); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	for i := range o.largeScrapes {
		logf("large: scrape %d of %d each way", i+1, o.largeScrapes)
		for k := range wayCount {
			w := ways[(k+i)%wayCount]
			before := w.cpu.read()
			d, err := once(w)
			if err != nil {
				return err
			}
			w.used.add(w.cpu.read().sub(before))
			w.times = append(w.times, d)
		}
	}
	var medians [wayCount]float64
	for i, w := range ways {
		m, err := median(w.times)
		if err != nil {
			return err
		}
		medians[i] = m.Seconds()
	}
	label := fmt.Sprintf("2. %s payload, sequential (median of %d)%s", sizeString(o.largeSize), o.largeScrapes, o.target.note())
	sd, sp, st := medians[wayDirect], medians[wayPoll], medians[wayTunnel]
	t.add(row{scenario: label, metric: "seconds per scrape", direct: fmt.Sprintf("%.3f s", sd),
		poll: vsDirect(fmt.Sprintf("%.3f s", sp), sp, sd), tunnel: vsDirect(fmt.Sprintf("%.3f s", st), st, sd), vs: ratio(st, sp)})
	mbps := func(s float64) string { return fmt.Sprintf("%.0f MiB/s", float64(o.largeSize)/(1<<20)/s) }
	t.add(row{scenario: label, metric: "throughput", direct: mbps(sd),
		poll: vsDirect(mbps(sp), sd, sp), tunnel: vsDirect(mbps(st), sd, st), vs: ratio(sp, st)})
	n := float64(o.largeScrapes)
	msPer := func(s float64) string { return fmt.Sprintf("%.0f ms", 1e3*s/n) }
	cd, cp, ct := ways[wayDirect].used, ways[wayPoll].used, ways[wayTunnel].used
	t.add(row{scenario: label, metric: "CPU per scrape, all processes", direct: msPer(cd.total()),
		poll: vsDirect(msPer(cp.total()), cp.total(), cd.total()), tunnel: vsDirect(msPer(ct.total()), ct.total(), cd.total()), vs: ratio(ct.total(), cp.total())})
	t.add(row{scenario: label, metric: "CPU per scrape, proxy + client",
		poll: msPer(cp.proxy + cp.clients), tunnel: msPer(ct.proxy + ct.clients), vs: ratio(ct.proxy+ct.clients, cp.proxy+cp.clients)})
	t.add(row{scenario: label, metric: "  of which proxy", poll: msPer(cp.proxy), tunnel: msPer(ct.proxy), vs: ratio(ct.proxy, cp.proxy)})
	t.add(row{scenario: label, metric: "  of which client", poll: msPer(cp.clients), tunnel: msPer(ct.clients), vs: ratio(ct.clients, cp.clients)})
	// Per-stream flow control should keep both ends far below the
	// payload's size; 40 MiB is the bound docs/performance.md set for a
	// 50 MiB payload.
	const limit = 40 << 20
	for _, part := range []struct {
		name string
		of   func(*largeWay) *child
	}{{"proxy", func(w *largeWay) *child { return w.proxy }}, {"client", func(w *largeWay) *child { return w.client }}} {
		hp, err := procStatus(part.of(ways[wayPoll]).pid(), "VmHWM")
		if err != nil {
			return err
		}
		ht, err := procStatus(part.of(ways[wayTunnel]).pid(), "VmHWM")
		if err != nil {
			return err
		}
		t.add(row{scenario: label, metric: part.name + " peak RSS (VmHWM)", poll: sizeString(hp), tunnel: sizeString(ht),
			vs: ratio(float64(ht), float64(hp)), target: "< 40 MiB", met: metEach(hp < limit, ht < limit)})
	}
	return nil
}
