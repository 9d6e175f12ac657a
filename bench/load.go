package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// payload returns size bytes that look like the Prometheus text format.
func payload(size int) []byte {
	buf := make([]byte, 0, size+128)
	for i := 0; len(buf) < size; i++ {
		buf = fmt.Appendf(buf, "bench_metric_total{instance=\"target\",series=\"%d\"} %d\n", i, i*7)
	}
	return buf[:size]
}

const (
	// sizeParam is the query parameter of a scrape URL that asks the
	// target for a body of another size than its default, so that one
	// target, and one set of clients allowed to scrape its port, serves
	// every size of a run.
	sizeParam = "size"
	// maxServedSize bounds what a scrape may ask for.
	maxServedSize = 1 << 30
)

// sizedURL returns the scrape URL of host for a body of size bytes.
func sizedURL(host string, size int) string {
	return "http://" + host + "/metrics?" + sizeParam + "=" + strconv.Itoa(size)
}

// targetHandler serves size bytes of metrics at any path, or the size the
// scrape asks for. Large bodies are streamed from one repeated chunk, so
// that the target stays small. Without a Content-Length, a body larger
// than net/http's buffer goes out chunked, as the answers of most
// exporters do.
func targetHandler(size int64, chunked bool) http.Handler {
	chunk := payload(64 << 10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size := size
		if asked := r.URL.Query().Get(sizeParam); asked != "" {
			n, err := strconv.ParseInt(asked, 10, 64)
			if err != nil || n < 0 || n > maxServedSize {
				http.Error(w, "bad size", http.StatusBadRequest)
				return
			}
			size = n
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if !chunked {
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		w.WriteHeader(http.StatusOK)
		for left := size; left > 0; {
			n := min(left, int64(len(chunk)))
			if _, err := w.Write(chunk[:n]); err != nil {
				return
			}
			left -= n
		}
	})
}

// serveTarget is the target process: it serves size bytes on a free
// loopback port until it is killed, and reports the port on standard error.
func serveTarget(size int64, chunked bool) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "target listening address=%s\n", ln.Addr())
	srv := &http.Server{Handler: targetHandler(size, chunked), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(ln)
}

// target is the scrape target: by default a process of its own, as a real
// target is never inside Prometheus; in-process, a direct scrape skips the
// wake-up of another process and is cheaper than any real one.
type target struct {
	port int
	proc *child       // when a process
	srv  *http.Server // when in-process
}

var targetRE = regexp.MustCompile(`target listening address=(\S+)`)

// targetOptions say how the target runs and answers.
type targetOptions struct {
	inProcess bool // in the tool's own process
	chunked   bool // answers without a Content-Length
}

// note describes options other than the defaults, for the table.
func (o targetOptions) note() string {
	var notes []string
	if o.inProcess {
		notes = append(notes, "target in-process")
	}
	if o.chunked {
		notes = append(notes, "chunked target")
	}
	if len(notes) == 0 {
		return ""
	}
	return ", " + strings.Join(notes, ", ")
}

// startTarget starts a target serving size bytes on 127.0.0.1.
func startTarget(size int64, opts targetOptions) (*target, error) {
	if opts.inProcess {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: targetHandler(size, opts.chunked), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		return &target{port: ln.Addr().(*net.TCPAddr).Port, srv: srv}, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addrs := make(chan string, 1)
	args := []string{"--serve-target=" + strconv.FormatInt(size, 10)}
	if opts.chunked {
		args = append(args, "--target.chunked")
	}
	proc, err := startChild("target", self, args, func(line string) {
		if m := targetRE.FindStringSubmatch(line); m != nil {
			select {
			case addrs <- m[1]:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case addr := <-addrs:
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			proc.stop()
			return nil, err
		}
		n, err := strconv.Atoi(port)
		if err != nil {
			proc.stop()
			return nil, err
		}
		return &target{port: n, proc: proc}, nil
	case <-proc.exited:
		return nil, fmt.Errorf("target exited before listening:\n%s", proc.output())
	case <-timer.C:
		proc.stop()
		return nil, fmt.Errorf("target did not report its address within 10s:\n%s", proc.output())
	}
}

// pid returns the target's process id, or the tool's when in-process.
func (t *target) pid() int {
	if t.proc != nil {
		return t.proc.pid()
	}
	return os.Getpid()
}

func (t *target) close() {
	if t.proc != nil {
		t.proc.stop()
		return
	}
	_ = t.srv.Close()
}

// scraper plays Prometheus: a keep-alive HTTP client, through the proxy at
// proxyAddr, or straight to the target when proxyAddr is empty.
func scraper(proxyAddr string, conns int, timeout time.Duration) *http.Client {
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	if proxyAddr != "" {
		transport.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr})
	}
	return &http.Client{Transport: transport, Timeout: timeout}
}

// scrapeOnce makes one scrape of url and reads the whole body, which must
// have wantSize bytes.
func scrapeOnce(ctx context.Context, client *http.Client, url string, timeout time.Duration, wantSize int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	// The headers Prometheus sends.
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
	req.Header.Set("User-Agent", "Prometheus/3.0.0")
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	if n != wantSize {
		return fmt.Errorf("body of %d bytes, want %d", n, wantSize)
	}
	return nil
}

// loadResult is what one run of scrapes measured.
type loadResult struct {
	latencies []time.Duration // of the successful scrapes
	errors    int
	firstErr  error
	elapsed   time.Duration
}

// rate returns successful scrapes per second.
func (r loadResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(len(r.latencies)) / r.elapsed.Seconds()
}

// percentile returns the nearest-rank percentile p (0..100) of the
// latencies.
func (r loadResult) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	sorted := slices.Clone(r.latencies)
	slices.Sort(sorted)
	rank := int(math.Ceil(float64(len(sorted))*p/100)) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// runLoad makes count scrapes with concurrency workers; urlFor names the
// URL of scrape i. It stops early when ctx ends.
func runLoad(ctx context.Context, client *http.Client, count, concurrency int, urlFor func(i int) string, timeout time.Duration, wantSize int64) loadResult {
	var (
		next      atomic.Int64
		mu        sync.Mutex
		res       loadResult
		wg        sync.WaitGroup
		latencies = make([][]time.Duration, concurrency)
	)
	// Many failures mean something is broken: stop rather than wait out
	// every timeout.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	const maxErrors = 10
	start := time.Now()
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				t0 := time.Now()
				err := scrapeOnce(ctx, client, urlFor(i), timeout, wantSize)
				d := time.Since(t0)
				if err != nil {
					mu.Lock()
					res.errors++
					if res.firstErr == nil {
						res.firstErr = err
					}
					if res.errors >= maxErrors {
						cancel()
					}
					mu.Unlock()
					continue
				}
				latencies[w] = append(latencies[w], d)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	for _, l := range latencies {
		res.latencies = append(res.latencies, l...)
	}
	if len(res.latencies)+res.errors < count {
		res.errors += count - len(res.latencies) - res.errors
		if res.firstErr == nil {
			res.firstErr = fmt.Errorf("stopped early: %w", ctx.Err())
		}
	}
	return res
}

// check turns a run with errors into an error.
func (r loadResult) check(what string) error {
	if r.errors == 0 {
		return nil
	}
	return fmt.Errorf("%s: %d of %d scrapes failed, first: %w", what, r.errors, r.errors+len(r.latencies), r.firstErr)
}

var errNoSamples = errors.New("no samples")

// median returns the median of ds.
func median(ds []time.Duration) (time.Duration, error) {
	if len(ds) == 0 {
		return 0, errNoSamples
	}
	sorted := slices.Clone(ds)
	slices.Sort(sorted)
	return sorted[len(sorted)/2], nil
}
