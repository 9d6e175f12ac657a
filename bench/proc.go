package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// children tracks every process the tool started, so that all of them are
// stopped on exit, whatever the exit.
var children struct {
	mu       sync.Mutex
	procs    map[*child]struct{}
	stopping bool // no more children once the tool is stopping; guarded by mu
}

// child is a running proxy or client binary.
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}

	mu   sync.Mutex
	tail []string // the last lines it wrote to standard error; guarded by mu
}

// maxTail is how many lines of a child's standard error are kept for error
// messages.
const maxTail = 20

// startChild runs path with args. onLine, if not nil, sees each line of the
// child's standard error.
func startChild(name, path string, args []string, onLine func(string)) (*child, error) {
	cmd := exec.Command(path, args...)
	cmd.Stdout = io.Discard
	// The child dies with the tool even if the tool is killed or crashes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan struct{})}
	children.mu.Lock()
	if children.procs == nil {
		children.procs = map[*child]struct{}{}
	}
	children.procs[c] = struct{}{}
	stopping := children.stopping
	children.mu.Unlock()
	go func() {
		scanner := bufio.NewScanner(stderr)
		scanner.Buffer(make([]byte, 4096), 1<<20)
		for scanner.Scan() {
			line := scanner.Text()
			c.mu.Lock()
			c.tail = append(c.tail, line)
			if len(c.tail) > maxTail {
				c.tail = c.tail[len(c.tail)-maxTail:]
			}
			c.mu.Unlock()
			if onLine != nil {
				onLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
		close(c.exited)
	}()
	if stopping {
		c.stop()
		return nil, errors.New("the tool is stopping")
	}
	return c, nil
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// output returns the last lines the child wrote to standard error.
func (c *child) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}

// alive reports whether the child still runs.
func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// stop asks the child to stop, and kills it if it has not within a second.
func (c *child) stop() {
	children.mu.Lock()
	delete(children.procs, c)
	children.mu.Unlock()
	if !c.alive() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(time.Second)
	defer timer.Stop()
	select {
	case <-c.exited:
		return
	case <-timer.C:
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// stopAll stops every child still running, all at once. With forever set,
// children started from then on are stopped at once too.
func stopAll(forever bool) {
	children.mu.Lock()
	children.stopping = children.stopping || forever
	procs := make([]*child, 0, len(children.procs))
	for c := range children.procs {
		procs = append(procs, c)
	}
	children.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop()
		}()
	}
	wg.Wait()
}

var listeningRE = regexp.MustCompile(`msg=listening address=(\S+)`)

// startProxy runs the proxy binary on a free loopback port and returns it
// with its address once it listens.
func startProxy(path string, extra ...string) (*child, string, error) {
	addrs := make(chan string, 1)
	args := append([]string{"--web.listen-address=127.0.0.1:0", "--log.level=info"}, extra...)
	proxy, err := startChild("proxy", path, args, func(line string) {
		if m := listeningRE.FindStringSubmatch(line); m != nil {
			select {
			case addrs <- strings.Trim(m[1], `"`):
			default:
			}
		}
	})
	if err != nil {
		return nil, "", err
	}
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case addr := <-addrs:
		return proxy, addr, nil
	case <-proxy.exited:
		return nil, "", fmt.Errorf("proxy exited before listening:\n%s", proxy.output())
	case <-timer.C:
		proxy.stop()
		return nil, "", fmt.Errorf("proxy did not log its address within 10s:\n%s", proxy.output())
	}
}

// startClient runs one client binary that answers for fqdn and scrapes the
// target on 127.0.0.1:targetPort.
func startClient(path, proxyAddr, fqdn string, targetPort int, transport string) (*child, error) {
	return startChild("client "+fqdn, path, []string{
		"--proxy.transport=" + transport,
		"--fqdn=" + fqdn,
		"--proxy-url=http://" + proxyAddr + "/",
		"--use-localhost",
		"--allow-port=" + strconv.Itoa(targetPort),
		"--metrics-addr=127.0.0.1:0",
		"--log.level=warn",
	}, nil)
}

// procStatus returns a field of /proc/PID/status in bytes (the kB fields).
func procStatus(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		name, value, ok := strings.Cut(scanner.Text(), ":")
		if !ok || name != field {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, err
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// cpuSeconds returns the user and system CPU time a process has used.
func cpuSeconds(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces; fields follow it.
	s := string(raw)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, errors.New("malformed /proc/PID/stat")
	}
	fields := strings.Fields(s[end+1:])
	// utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
	if len(fields) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed /proc/PID/stat times")
	}
	// USER_HZ is 100 on every Linux this runs on.
	return (utime + stime) / 100, nil
}

// metricsClient fetches the proxy's own /metrics.
var metricsClient = &http.Client{Timeout: 10 * time.Second}

// proxyMetrics fetches the proxy's /metrics and returns the values of the
// unlabelled samples among names.
func proxyMetrics(ctx context.Context, addr string, names ...string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := metricsClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	want := map[string]bool{}
	for _, name := range names {
		want[name] = true
	}
	values := map[string]float64{}
	scanner := bufio.NewScanner(resp.Body)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok || !want[name] {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		values[name] = v
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	for _, name := range names {
		if _, ok := values[name]; !ok {
			return nil, fmt.Errorf("proxy has no metric %s", name)
		}
	}
	return values, nil
}

// waitFor calls check every 50ms until it reports done, fails, or ctx or
// limit ends.
func waitFor(ctx context.Context, limit time.Duration, what string, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	var lastErr error
	for {
		done, err := check()
		if done {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), lastErr)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-ticker.C:
		}
	}
}
