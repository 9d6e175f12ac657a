package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rancher/pushprox/util"
)

// floodRSSLimit is the bound of issue 13 on the proxy's peak memory under
// the flood, with default flags.
const floodRSSLimit = 512 << 20

// floodClientsLimit is how long GET /clients may take during the flood:
// "within seconds", as issue 13 puts it.
const floodClientsLimit = 5 * time.Second

// floodOptions configure the flood scenario.
type floodOptions struct {
	workers    int
	duration   time.Duration
	sources    int
	labelBytes int
	scrapes    int
}

// floodFlags defines the flood scenario's flags.
func floodFlags(o *floodOptions) {
	flag.IntVar(&o.workers, "flood.workers", 20, "flood: workers registering a new client per poll")
	flag.DurationVar(&o.duration, "flood.duration", 25*time.Second, "flood: how long the flood lasts")
	flag.IntVar(&o.sources, "flood.sources", 8, "flood: loopback source addresses the workers share, 127.0.0.2 on (at most 250)")
	flag.IntVar(&o.labelBytes, "flood.label-bytes", 3600, "flood: size of each poll's encoded labels header (at most 4096)")
	flag.IntVar(&o.scrapes, "flood.scrapes", 5, "flood: scrapes of the real client through the proxy during the flood")
}

// floodCounts are the flood's outcomes, as the workers saw them.
type floodCounts struct {
	accepted, refused, failed atomic.Int64
	mu                        sync.Mutex
	firstErr                  error // the first unexpected answer; guarded by mu
}

func (c *floodCounts) fail(err error) {
	c.failed.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.firstErr == nil {
		c.firstErr = err
	}
}

// floodScenario: workers register a new client with large labels on every
// poll, from several loopback sources, against the proxy with its
// defaults; meanwhile a real client connects and is scraped, and
// /clients is fetched twice at once. Reports the proxy's peak memory,
// registrations accepted and refused, /clients time and whether the real
// client was served.
func floodScenario(ctx context.Context, o options, t *table) error {
	f := o.flood
	if f.sources < 1 || f.sources > 250 || f.workers < 1 || f.labelBytes > util.MaxLabelsBytes {
		return errors.New("--flood.sources must be 1 to 250, --flood.workers positive, --flood.label-bytes at most 4096")
	}
	ctx, cancel := context.WithTimeout(ctx, f.duration+2*time.Minute)
	defer cancel()
	const targetSize = 2048
	tgt, err := startTarget(targetSize, o.target)
	if err != nil {
		return err
	}
	defer tgt.close()
	proxy, addr, err := startProxy(o.proxyPath)
	if err != nil {
		return err
	}
	defer proxy.stop()

	logf("flood: %d workers from %d sources for %s", f.workers, f.sources, f.duration)
	fctx, stopFlood := context.WithTimeout(ctx, f.duration)
	defer stopFlood()
	var counts floodCounts
	var workers sync.WaitGroup
	padding := floodPadding(f.labelBytes)
	start := time.Now()
	for w := range f.workers {
		source := net.IPv4(127, 0, 0, byte(2+w%f.sources))
		workers.Go(func() { floodWorker(fctx, addr, source, w, padding, &counts) })
	}

	// Two /clients at once, while the flood goes on.
	type fetched struct {
		elapsed time.Duration
		bytes   int64
		err     error
	}
	var lists [2]fetched
	var fetches sync.WaitGroup
	for i := range lists {
		fetches.Go(func() {
			if !util.Sleep(fctx, f.duration*3/5) {
				lists[i].err = errors.New("the flood ended first")
				return
			}
			begin := time.Now()
			lists[i].bytes, lists[i].err = fetchClients(ctx, addr)
			lists[i].elapsed = time.Since(begin)
		})
	}
	defer fetches.Wait()

	// The real client connects a while into the flood.
	if !util.Sleep(fctx, f.duration/5) {
		return errors.New("the flood ended before the real client started")
	}
	client, err := startClient(o.clientPath, addr, "real-client", tgt.port, "tunnel")
	if err != nil {
		return err
	}
	defer client.stop()
	real := scrapeRealClient(fctx, addr, fmt.Sprintf("http://real-client:%d/metrics", tgt.port), targetSize, f.scrapes)
	fetches.Wait()
	<-fctx.Done()
	workers.Wait()
	elapsed := time.Since(start)

	refusedMetric := `pushprox_proxy_registrations_refused_total{reason="rate_limited"}`
	after, err := proxyMetrics(ctx, addr, "pushprox_proxy_clients", refusedMetric)
	if err != nil {
		return fmt.Errorf("%w\nproxy:\n%s", err, proxy.output())
	}
	hwm, err := procStatus(proxy.pid(), "VmHWM")
	if err != nil {
		return err
	}

	scenario := fmt.Sprintf("4. flood: %d workers, %d sources, %s, new client and %d B of labels per poll", f.workers, f.sources, f.duration, f.labelBytes)
	accepted, refused := counts.accepted.Load(), counts.refused.Load()
	polls := accepted + refused + counts.failed.Load()
	t.add(row{scenario: scenario, metric: "flood polls/s", poll: fmt.Sprintf("%.0f", float64(polls)/elapsed.Seconds())})
	t.add(row{scenario: scenario, metric: "registrations accepted / refused (429)", poll: fmt.Sprintf("%d / %d (metric: %.0f refused)", accepted, refused, after[refusedMetric])})
	t.add(row{scenario: scenario, metric: "clients known at the end", poll: fmt.Sprintf("%.0f", after["pushprox_proxy_clients"])})
	t.add(row{scenario: scenario, metric: "proxy peak RSS (VmHWM)", poll: sizeString(hwm), target: "< 512 MiB", met: met(hwm < floodRSSLimit)})
	listsOK := true
	var listed []string
	for _, l := range lists {
		if l.err != nil {
			listsOK = false
			listed = append(listed, "failed: "+l.err.Error())
			continue
		}
		listsOK = listsOK && l.elapsed < floodClientsLimit
		listed = append(listed, fmt.Sprintf("%s, %s", secs(l.elapsed), sizeString(l.bytes)))
	}
	t.add(row{scenario: scenario, metric: "GET /clients, two at once", poll: strings.Join(listed, "; "), target: "< 5 s", met: met(listsOK)})
	t.add(row{scenario: scenario, metric: "real client served", tunnel: real.summary(), target: "yes", met: met(real.served())})
	if len(real.latencies) > 0 {
		r := loadResult{latencies: real.latencies}
		t.add(row{scenario: scenario, metric: "real client scrape p50 / max", tunnel: ms(r.percentile(50)) + " / " + ms(r.percentile(100))})
	}
	if failed := counts.failed.Load(); failed > 0 {
		counts.mu.Lock()
		defer counts.mu.Unlock()
		return fmt.Errorf("%d flood polls neither accepted nor refused, first: %w", failed, counts.firstErr)
	}
	return nil
}

// floodPadding returns label values that bring a poll's encoded labels to
// about size bytes, each within util.MaxLabelValueBytes.
func floodPadding(size int) map[string]string {
	padding := map[string]string{}
	// What the unique "id" label takes, with its separator.
	left := size - len("id=00-0000000&")
	for i := 0; left > 0; i++ {
		name := fmt.Sprintf("pad%d", i)
		n := min(left-len(name)-2, 1000)
		if n <= 0 {
			break
		}
		padding[name] = strings.Repeat("x", n)
		left -= len(name) + 2 + n
	}
	return padding
}

// floodWorker polls as a new client, with Prefer: wait=0, over and over
// from source until ctx ends, and counts the answers.
func floodWorker(ctx context.Context, addr string, source net.IP, worker int, padding map[string]string, counts *floodCounts) {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: source}, Timeout: 5 * time.Second}
	transport := &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 1}
	defer transport.CloseIdleConnections()
	httpClient := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	labels := make(map[string]string, len(padding)+1)
	for name, value := range padding {
		labels[name] = value
	}
	for i := 0; ctx.Err() == nil; i++ {
		fqdn := fmt.Sprintf("flood-%d-%d", worker, i)
		// Distinct labels, so that sharing label sets saves nothing.
		labels["id"] = fmt.Sprintf("%02d-%07d", worker, i)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/poll", strings.NewReader(fqdn))
		if err != nil {
			counts.fail(err)
			return
		}
		req.Header.Set(util.HeaderLabels, util.EncodeLabels(labels))
		req.Header.Set(util.HeaderPrefer, "wait=0")
		resp, err := httpClient.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				counts.fail(err)
			}
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusNoContent:
			counts.accepted.Add(1)
		case http.StatusTooManyRequests:
			counts.refused.Add(1)
		default:
			counts.fail(fmt.Errorf("poll as %s answered %s", fqdn, resp.Status))
		}
	}
}

// realClientResult is how the real client fared during the flood.
type realClientResult struct {
	firstServed time.Duration // from its start to its first served scrape
	latencies   []time.Duration
	want        int
	err         error // the last failure, if it was never served
}

func (r realClientResult) served() bool { return r.err == nil && len(r.latencies) == r.want }

func (r realClientResult) summary() string {
	if r.err != nil && len(r.latencies) == 0 {
		return "no: " + r.err.Error()
	}
	answer := "yes"
	if !r.served() {
		answer = "no"
	}
	return fmt.Sprintf("%s, %d of %d scrapes, first %s after it started", answer, len(r.latencies), r.want, secs(r.firstServed))
}

// scrapeRealClient scrapes the real client through the proxy until it is
// served once, then n more times a second apart, all while ctx lasts.
func scrapeRealClient(ctx context.Context, addr, url string, size int64, n int) realClientResult {
	const timeout = 10 * time.Second
	viaProxy := scraper(addr, 1, timeout+5*time.Second)
	start := time.Now()
	result := realClientResult{want: n}
	for {
		if result.err = scrapeOnce(ctx, viaProxy, url, timeout, size); result.err == nil {
			break
		}
		if !util.Sleep(ctx, 200*time.Millisecond) {
			return result
		}
	}
	result.firstServed = time.Since(start)
	for range n {
		if !util.Sleep(ctx, time.Second) {
			result.err = errors.New("the flood ended first")
			return result
		}
		begin := time.Now()
		if result.err = scrapeOnce(ctx, viaProxy, url, timeout, size); result.err != nil {
			return result
		}
		result.latencies = append(result.latencies, time.Since(begin))
	}
	return result
}

// fetchClients reads the proxy's /clients and returns its size.
func fetchClients(ctx context.Context, addr string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/clients", nil)
	if err != nil {
		return 0, err
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = errors.New("GET /clients: " + resp.Status + ", " + strconv.FormatInt(n, 10) + " bytes")
	}
	return n, err
}
