package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// referenceOptions name the binaries of a reference PushProx that the small
// scenario measures as a fourth way, side by side with ours. Its client must
// take the Rancher fork's --use-localhost and --allow-port, as ours does,
// so that its clients scrape the same target under the same FQDNs.
type referenceOptions struct {
	proxyPath, clientPath string
}

// enabled says whether a reference was given.
func (r referenceOptions) enabled() bool { return r.proxyPath != "" }

// validate refuses half a reference, and paths that do not exist.
func (r referenceOptions) validate() error {
	if (r.proxyPath == "") != (r.clientPath == "") {
		return fmt.Errorf("--reference.proxy and --reference.client go together")
	}
	for _, path := range []string{r.proxyPath, r.clientPath} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("reference binary: %w", err)
		}
	}
	return nil
}

// referenceFleet is a running reference proxy and its clients.
type referenceFleet struct {
	addr    string
	proxy   *child
	clients []int // pids
}

// startReference starts the reference proxy on a free loopback port and n
// clients r0… that scrape 127.0.0.1:targetPort, and waits until the proxy
// lists them all.
func startReference(ctx context.Context, r referenceOptions, n, targetPort int) (*referenceFleet, error) {
	// The reference proxy logs the address it was given, not the one it
	// got: it is given a port that was free a moment ago.
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	proxy, err := startChild("reference proxy", r.proxyPath, []string{"--web.listen-address=" + addr}, nil)
	if err != nil {
		return nil, err
	}
	f := &referenceFleet{addr: addr, proxy: proxy}
	for i := range n {
		c, err := startChild(fmt.Sprintf("reference client r%d", i), r.clientPath, []string{
			"--fqdn=r" + strconv.Itoa(i),
			"--proxy-url=http://" + addr + "/",
			"--use-localhost",
			"--allow-port=" + strconv.Itoa(targetPort),
			"--metrics-addr=127.0.0.1:0",
			"--log.level=warn",
		}, nil)
		if err != nil {
			return nil, err
		}
		f.clients = append(f.clients, c.pid())
	}
	err = waitFor(ctx, time.Minute, fmt.Sprintf("%d clients listed by the reference proxy", n), func() (bool, error) {
		listed, err := listedClients(ctx, addr)
		return listed >= n, err
	})
	if err != nil {
		return nil, fmt.Errorf("%w\nreference proxy:\n%s", err, proxy.output())
	}
	return f, nil
}

// listedClients returns how many clients a proxy's /clients lists.
func listedClients(ctx context.Context, addr string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/clients", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/clients answered %s", resp.Status)
	}
	var clients []struct {
		Targets []string `json:"targets"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&clients); err != nil {
		return 0, fmt.Errorf("/clients: %w", err)
	}
	return len(clients), nil
}

// freePort returns a loopback TCP port that was free when asked.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
