package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// fleet is a crowd of simulated clients run in-process. Polling ones each
// hold one keep-alive connection to the proxy, park a poll on it, and when
// handed a scrape, push a fixed answer on the same connection and poll
// again. Tunnel ones each open a tunnel and answer every stream the proxy
// opens on it (tunnel.go). They speak the protocol the way pushprox-client
// does, without the cost of one process each.
type fleet struct {
	proxyAddr string
	body      []byte // the body of every answer
	tunnel    bool   // tunnels instead of polls

	wg       sync.WaitGroup
	started  atomic.Int64 // simulated clients started, numbering them
	served   atomic.Int64
	failures atomic.Int64
	mu       sync.Mutex
	firstErr error // guarded by mu
}

// start connects a simulated client for fqdn and runs it until ctx ends.
// dialing bounds the connections being opened at once, so that the proxy's
// accept queue does not overflow.
func (f *fleet) start(ctx context.Context, fqdn string, dialing chan struct{}) {
	source := fleetSource(int(f.started.Add(1) - 1))
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := f.run(ctx, fqdn, source, dialing); err != nil && ctx.Err() == nil {
			f.failures.Add(1)
			f.mu.Lock()
			if f.firstErr == nil {
				f.firstErr = fmt.Errorf("simulated client %s: %w", fqdn, err)
			}
			f.mu.Unlock()
		}
	}()
}

// err returns the first failure of a simulated client, if any.
func (f *fleet) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.firstErr == nil {
		return nil
	}
	return fmt.Errorf("%d simulated clients failed, first: %w", f.failures.Load(), f.firstErr)
}

// clientsPerSource is how many simulated clients share a loopback source
// address: half the proxy's default --registration.burst-per-source, so
// that the fleet registers at once as one of many hosts would.
const clientsPerSource = 500

// fleetSource is the loopback address the i-th simulated client connects
// from: 127.1.0.1 for the first clientsPerSource, and so on.
func fleetSource(i int) net.IP {
	k := i / clientsPerSource
	return net.IPv4(127, 1, byte(k/250), byte(k%250+1))
}

// run runs one simulated client, connecting from source, until ctx ends or
// it fails.
func (f *fleet) run(ctx context.Context, fqdn string, source net.IP, dialing chan struct{}) error {
	conn, err := f.dial(ctx, source, dialing)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Closing the connection ends a read blocked on a parked poll, a
	// tunnel handshake, or a tunnel waiting for its next stream.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if f.tunnel {
		return f.runTunnel(ctx, conn, fqdn)
	}
	return f.runPoll(ctx, conn, fqdn)
}

// dial connects to the proxy from source, one of at most cap(dialing) at
// once.
func (f *fleet) dial(ctx context.Context, source net.IP, dialing chan struct{}) (net.Conn, error) {
	select {
	case dialing <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-dialing }()
	dialer := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: source}}
	return dialer.DialContext(ctx, "tcp", f.proxyAddr)
}

// runPoll parks polls on conn and pushes an answer to every scrape they
// bring.
func (f *fleet) runPoll(ctx context.Context, conn net.Conn, fqdn string) error {
	br := bufio.NewReaderSize(conn, 4096)
	pollRequest := fmt.Appendf(nil, "POST /poll HTTP/1.1\r\nHost: %s\r\nUser-Agent: pushprox-bench\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		f.proxyAddr, len(fqdn), fqdn)
	for ctx.Err() == nil {
		if _, err := conn.Write(pollRequest); err != nil {
			return fmt.Errorf("sending poll: %w", err)
		}
		resp, body, err := readResponse(br)
		if err != nil {
			return fmt.Errorf("reading poll answer: %w", err)
		}
		switch resp.StatusCode {
		case http.StatusNoContent:
			continue
		case http.StatusOK:
		default:
			return fmt.Errorf("poll answered %s: %s", resp.Status, bytes.TrimSpace(body))
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(body)))
		if err != nil {
			return fmt.Errorf("poll answer is not a request: %w", err)
		}
		if host := req.URL.Hostname(); host != fqdn {
			return fmt.Errorf("handed a scrape of %q", host)
		}
		id := req.Header.Get("Id")
		if id == "" {
			return errors.New("scrape request without Id")
		}
		head := fmt.Appendf(nil, "HTTP/1.1 200 OK\r\nId: %s\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: %d\r\n\r\n",
			id, len(f.body))
		pushHead := fmt.Appendf(nil, "POST /push HTTP/1.1\r\nHost: %s\r\nUser-Agent: pushprox-bench\r\nContent-Type: application/http\r\nContent-Length: %d\r\n\r\n",
			f.proxyAddr, len(head)+len(f.body))
		buffers := net.Buffers{pushHead, head, f.body}
		if _, err := buffers.WriteTo(conn); err != nil {
			return fmt.Errorf("sending push: %w", err)
		}
		resp, body, err = readResponse(br)
		if err != nil {
			return fmt.Errorf("reading push answer: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("push answered %s: %s", resp.Status, bytes.TrimSpace(body))
		}
		f.served.Add(1)
		if resp.Close {
			return errors.New("proxy closed the connection after a push")
		}
	}
	return ctx.Err()
}

// readResponse reads one response and its body, which must be small.
func readResponse(br *bufio.Reader) (*http.Response, []byte, error) {
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, err
	}
	return resp, body, nil
}

// wait waits for every simulated client to end, at most limit.
func (f *fleet) wait(limit time.Duration) error {
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("simulated clients still running after %s", limit)
	}
}

// raiseFileLimit raises the soft limit on open files to the hard limit and
// returns the new soft limit. Child processes inherit it.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

// ephemeralPorts returns how many local ports loopback connections can use.
func ephemeralPorts() (int, error) {
	raw, err := readFileString("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(raw)
	if len(fields) != 2 {
		return 0, fmt.Errorf("malformed ip_local_port_range %q", raw)
	}
	lo, err1 := strconv.Atoi(fields[0])
	hi, err2 := strconv.Atoi(fields[1])
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed ip_local_port_range %q", raw)
	}
	return hi - lo + 1, nil
}
