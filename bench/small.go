package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// smallWay is one way of scraping in the small scenario: straight to the
// target, or through the proxy to one set of clients.
type smallWay struct {
	name   string
	client *http.Client
	url    func(i, size int) string // of scrape i for a body of size bytes
	cpu    cpuMeter
	proxy  *child // whose output explains a failure; nil for direct
}

// wayReference is the small scenario's fourth way, when a reference
// PushProx is given: its proxy and clients, polling.
const (
	wayReference  = wayCount
	smallWayCount = wayCount + 1
)

// roundsPerWay is how many rounds each measurement of the small scenario
// takes per way measured: two full rotations of the ways, so that a slow
// moment of a shared machine falls on more than one round.
const roundsPerWay = 2

// failed adds the output of the way's proxy to err.
func (w smallWay) failed(err error) error {
	if w.proxy == nil {
		return err
	}
	return fmt.Errorf("%w\n%s proxy:\n%s", err, w.name, w.proxy.output())
}

// smallRounds is how many rounds a measurement takes: roundsPerWay for
// each way measured.
func (o options) smallRounds() int {
	if o.reference.enabled() {
		return roundsPerWay * smallWayCount
	}
	return roundsPerWay * wayCount
}

// smallResult is what one way measured at one size.
type smallResult struct {
	load loadResult
	cpu  cpuUse
}

// perScrape returns CPU seconds per successful scrape of part of the use.
func (r smallResult) perScrape(part float64) float64 {
	if len(r.load.latencies) == 0 {
		return 0
	}
	return part / float64(len(r.load.latencies))
}

// smallScenario: small payloads of each size, scraped directly, through
// the proxy to clients that poll, and through the proxy to clients on
// tunnels, in interleaved rounds.
//
// Both sets of clients run against one proxy for the whole scenario, so
// that the rounds can interleave finely: drift (other work on a shared
// machine, the proxy's heap growing) then hits the three ways alike. The
// set not being scraped sits idle: a poll re-sent every 30 s, a tunnel ping
// every 15 s, well under a millisecond of CPU a second for the whole set
// against the near two CPU-seconds a second a round uses. Its clients' CPU
// is not counted, since each way's meter reads only its own clients; the
// proxy's upkeep of it is, and is lost in the noise.
func smallScenario(ctx context.Context, o options, t *table) error {
	// The scenario's share of the run: every size runs its warm-up and two
	// measurements well within it on two cores.
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	tgt, err := startTarget(int64(o.smallSizes[0]), o.target)
	if err != nil {
		return err
	}
	defer tgt.close()
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return err
	}
	// pids[way] are the clients of a transport, started as p0… and t0….
	pids := [smallWayCount][]int{}
	for _, set := range []struct {
		way       int
		prefix    string
		transport string
	}{{wayPoll, "p", "poll"}, {wayTunnel, "t", "tunnel"}} {
		for i := range o.smallClients {
			c, err := startClient(o.clientPath, addr, fmt.Sprintf("%s%d", set.prefix, i), tgt.port, set.transport)
			if err != nil {
				return err
			}
			pids[set.way] = append(pids[set.way], c.pid())
		}
	}
	if err := waitConnected(ctx, addr, o.smallClients, o.smallClients, time.Minute); err != nil {
		return fmt.Errorf("%w\nproxy:\n%s", err, proxy.output())
	}

	const timeout = 10 * time.Second
	// Twice the scrapers' connections stay idle, so that none is redialled
	// between rounds.
	conns := 2 * o.smallConcurrency
	viaProxy := scraper(addr, conns, timeout+5*time.Second)
	throughClients := func(prefix string) func(i, size int) string {
		return func(i, size int) string {
			return sizedURL(fmt.Sprintf("%s%d:%d", prefix, i%o.smallClients, tgt.port), size)
		}
	}
	ways := [smallWayCount]smallWay{
		wayDirect: {"direct", scraper("", conns, timeout+5*time.Second), func(_, size int) string {
			return sizedURL(fmt.Sprintf("127.0.0.1:%d", tgt.port), size)
		}, cpuMeter{target: tgt.pid()}, nil},
		wayPoll:   {"poll", viaProxy, throughClients("p"), cpuMeter{target: tgt.pid(), proxy: proxy.pid(), clients: pids[wayPoll]}, proxy},
		wayTunnel: {"tunnel", viaProxy, throughClients("t"), cpuMeter{target: tgt.pid(), proxy: proxy.pid(), clients: pids[wayTunnel]}, proxy},
	}
	active := []int{wayDirect, wayPoll, wayTunnel}
	if o.reference.enabled() {
		ref, err := startReference(ctx, o.reference, o.smallClients, tgt.port)
		if err != nil {
			return err
		}
		ways[wayReference] = smallWay{"reference", scraper(ref.addr, conns, timeout+5*time.Second), throughClients("r"),
			cpuMeter{target: tgt.pid(), proxy: ref.proxy.pid(), clients: ref.clients}, ref.proxy}
		active = append(active, wayReference)
	}

	// measure runs rounds of count/rounds scrapes each way. The order
	// rotates every round, so that each way runs first, second and last
	// equally often and none gains from a warm cache or a quiet moment of
	// the machine.
	rounds := o.smallRounds()
	measure := func(size, count, concurrency int) ([smallWayCount]smallResult, error) {
		var res [smallWayCount]smallResult
		for round := range rounds {
			logf("small: %s, %d scrapers, round %d of %d: %d scrapes each way", sizeString(int64(size)), concurrency, round+1, rounds, count/rounds)
			for k := range active {
				w := active[(k+round)%len(active)]
				way := ways[w]
				before := way.cpu.read()
				r := runLoad(ctx, way.client, count/rounds, concurrency, func(i int) string { return way.url(i, size) }, timeout, int64(size))
				res[w].cpu.add(way.cpu.read().sub(before))
				res[w].load.latencies = append(res[w].load.latencies, r.latencies...)
				res[w].load.elapsed += r.elapsed
				if err := r.check(way.name + " scrapes"); err != nil {
					return res, way.failed(err)
				}
			}
		}
		return res, nil
	}

	for _, size := range o.smallSizes {
		// Warm up connections and buffers in every process at this size.
		warm := max(4*o.smallClients, 200)
		logf("small: %s, warming up", sizeString(int64(size)))
		for _, w := range active {
			way := ways[w]
			if err := runLoad(ctx, way.client, warm, o.smallConcurrency, func(i int) string { return way.url(i, size) }, timeout, int64(size)).check("warm-up " + way.name); err != nil {
				return way.failed(err)
			}
		}
		loaded, err := measure(size, o.smallScrapes, o.smallConcurrency)
		if err != nil {
			return err
		}
		label := fmt.Sprintf("1. %s payload, %d clients per transport, %d scrapers (%d scrapes each way)%s",
			sizeString(int64(size)), o.smallClients, o.smallConcurrency, len(loaded[wayDirect].load.latencies), o.target.note())
		addLoadRows(t, label, loaded, true)
		var hwm [smallWayCount]int64
		for _, w := range []int{wayPoll, wayTunnel} {
			for _, pid := range pids[w] {
				if v, err := procStatus(pid, "VmHWM"); err == nil {
					hwm[w] = max(hwm[w], v)
				}
			}
		}
		t.add(row{scenario: label, metric: "client peak RSS (VmHWM), largest", poll: sizeString(hwm[wayPoll]), tunnel: sizeString(hwm[wayTunnel]),
			vs: ratio(float64(hwm[wayTunnel]), float64(hwm[wayPoll]))})

		// The same with one scraper: the latency of the extra hops alone,
		// without scrapes competing for the cores.
		single, err := measure(size, o.smallSequential, 1)
		if err != nil {
			return err
		}
		label = fmt.Sprintf("1b. %s payload, 1 scraper (%d scrapes each way)", sizeString(int64(size)), len(single[wayDirect].load.latencies))
		addLoadRows(t, label, single, false)
	}
	if hwm, err := procStatus(proxy.pid(), "VmHWM"); err == nil {
		t.add(row{scenario: "1. all sizes, one proxy for both transports", metric: "proxy peak RSS (VmHWM)", poll: sizeString(hwm), tunnel: "same proxy"})
	}
	return nil
}

// Issue 11's targets for the tunnel against polls in the same run.
const (
	targetCPU  = 0.55 // CPU per scrape of proxy and client, at most
	targetRate = 1.7  // scrapes per second, at least
	targetP50  = 0.6  // p50 latency, at most
)

// addLoadRows adds the rows of one measurement of the three ways; full
// adds the CPU split and holds the rows to issue 11's targets.
func addLoadRows(t *table, label string, r [smallWayCount]smallResult, full bool) {
	d, p, tu, ref := r[wayDirect], r[wayPoll], r[wayTunnel], r[wayReference]
	// latencyRow adds a row of a percentile, in ms, with its ratios.
	// withReference adds the reference's value to a row, when it was
	// measured, and the tunnel's ratio to it.
	measuredRef := len(ref.load.latencies) > 0
	withReference := func(rw row, text string, vr, vt float64) row {
		if measuredRef {
			rw.reference, rw.vsReference = text, ratio(vt, vr)
		}
		return rw
	}
	latencyRow := func(metric string, pct float64, target float64) {
		vd, vp, vt := d.load.percentile(pct).Seconds(), p.load.percentile(pct).Seconds(), tu.load.percentile(pct).Seconds()
		vr := ref.load.percentile(pct).Seconds()
		rw := row{scenario: label, metric: metric, direct: msf(vd),
			poll: vsDirect(msf(vp), vp, vd), tunnel: vsDirect(msf(vt), vt, vd), vs: ratio(vt, vp)}
		rw = withReference(rw, vsDirect(msf(vr), vr, vd), vr, vt)
		if target > 0 {
			rw.target = fmt.Sprintf("≤ %.2g× poll", target)
			rw.met = met(vp > 0 && vt/vp <= target)
		}
		t.add(rw)
	}
	p50Target := 0.0
	if full {
		p50Target = targetP50
	}
	latencyRow("p50 latency", 50, p50Target)
	latencyRow("p99 latency", 99, 0)
	rd, rp, rt, rr := d.load.rate(), p.load.rate(), tu.load.rate(), ref.load.rate()
	rateRow := row{scenario: label, metric: "scrapes/s", direct: fmt.Sprintf("%.0f", rd),
		poll: vsDirect(fmt.Sprintf("%.0f", rp), rp, rd), tunnel: vsDirect(fmt.Sprintf("%.0f", rt), rt, rd), vs: ratio(rt, rp)}
	rateRow = withReference(rateRow, vsDirect(fmt.Sprintf("%.0f", rr), rr, rd), rr, rt)
	if full {
		rateRow.target = fmt.Sprintf("≥ %.2g× poll", targetRate)
		rateRow.met = met(rp > 0 && rt/rp >= targetRate)
	}
	t.add(rateRow)

	// CPU per scrape, in µs, of the proxy and the client together: what
	// the issue holds the tunnel to.
	pcP, pcT := p.perScrape(p.cpu.proxy+p.cpu.clients), tu.perScrape(tu.cpu.proxy+tu.cpu.clients)
	pcR := ref.perScrape(ref.cpu.proxy + ref.cpu.clients)
	cpuRow := row{scenario: label, metric: "CPU per scrape, proxy + client", poll: us(pcP), tunnel: us(pcT), vs: ratio(pcT, pcP)}
	cpuRow = withReference(cpuRow, us(pcR), pcR, pcT)
	if full {
		cpuRow.target = fmt.Sprintf("≤ %.2g× poll", targetCPU)
		cpuRow.met = met(pcP > 0 && pcT/pcP <= targetCPU)
	}
	t.add(cpuRow)
	if !full {
		return
	}
	// Then all four processes, and each of them.
	parts := []struct {
		metric string
		of     func(cpuUse) float64
		direct bool // whether a direct scrape has this process
	}{
		{"CPU per scrape, all processes", cpuUse.total, true},
		{"  of which Prometheus (the tool)", func(u cpuUse) float64 { return u.tool }, true},
		{"  of which target", func(u cpuUse) float64 { return u.target }, true},
		{"  of which proxy", func(u cpuUse) float64 { return u.proxy }, false},
		{"  of which client", func(u cpuUse) float64 { return u.clients }, false},
	}
	for _, part := range parts {
		vp, vt, vr := p.perScrape(part.of(p.cpu)), tu.perScrape(part.of(tu.cpu)), ref.perScrape(part.of(ref.cpu))
		rw := row{scenario: label, metric: part.metric, poll: us(vp), tunnel: us(vt), vs: ratio(vt, vp)}
		rw = withReference(rw, us(vr), vr, vt)
		if part.direct {
			vd := d.perScrape(part.of(d.cpu))
			rw.direct, rw.poll, rw.tunnel = us(vd), vsDirect(us(vp), vp, vd), vsDirect(us(vt), vt, vd)
			rw = withReference(rw, vsDirect(us(vr), vr, vd), vr, vt)
		}
		t.add(rw)
	}
}

// msf renders seconds as milliseconds.
func msf(s float64) string { return fmt.Sprintf("%.3f ms", 1e3*s) }

// us renders seconds as microseconds.
func us(s float64) string { return fmt.Sprintf("%.0f µs", 1e6*s) }
