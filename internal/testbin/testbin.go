// Package testbin builds the project's binaries and runs them in tests,
// killing them when the test ends.
package testbin

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"
)

// waitLimit bounds every wait for a process' output or exit.
const waitLimit = 60 * time.Second

// Build compiles the main package pkg into dir, with the race detector when
// the test binary has it, and returns the binary's path.
func Build(dir, pkg string) (string, error) {
	out := filepath.Join(dir, filepath.Base(pkg))
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	if output, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, output)
	}
	return out, nil
}

// Process is a running binary whose standard error is captured.
type Process struct {
	t      testing.TB
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // set before exited is closed

	mu     sync.Mutex
	output bytes.Buffer  // everything written so far; guarded by mu
	wake   chan struct{} // closed and replaced on each new line; guarded by mu
}

// Start runs the binary at path with args. The process is killed when the
// test ends; a data race it reports fails the test.
func Start(t testing.TB, path string, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, cmd: exec.Command(path, args...), exited: make(chan struct{}), wake: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", path, err)
	}
	go func() {
		scanner := bufio.NewScanner(stderr)
		scanner.Buffer(make([]byte, 64<<10), 1<<20)
		for scanner.Scan() {
			p.mu.Lock()
			p.output.Write(scanner.Bytes())
			p.output.WriteByte('\n')
			close(p.wake)
			p.wake = make(chan struct{})
			p.mu.Unlock()
		}
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.Kill()
		if bytes.Contains([]byte(p.Output()), []byte("WARNING: DATA RACE")) {
			t.Errorf("%s reported a data race:\n%s", filepath.Base(path), p.Output())
		}
	})
	return p
}

// Output returns what the process wrote to standard error so far.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.output.String()
}

// WaitForOutput waits until the process' standard error matches re and
// returns the submatches of the first match.
func (p *Process) WaitForOutput(re *regexp.Regexp) []string {
	p.t.Helper()
	timeout := time.NewTimer(waitLimit)
	defer timeout.Stop()
	for {
		p.mu.Lock()
		match := re.FindStringSubmatch(p.output.String())
		wake := p.wake
		p.mu.Unlock()
		if match != nil {
			return match
		}
		select {
		case <-wake:
		case <-p.exited:
			// The last lines may have come with the exit.
			if match := re.FindStringSubmatch(p.Output()); match != nil {
				return match
			}
			p.t.Fatalf("process exited (%v) before writing %q:\n%s", p.err, re, p.Output())
		case <-timeout.C:
			p.t.Fatalf("no output matching %q within %s:\n%s", re, waitLimit, p.Output())
		}
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signalling process: %v", err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Process) Wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(waitLimit):
		p.t.Fatalf("process did not exit within %s:\n%s", waitLimit, p.Output())
	}
	return p.cmd.ProcessState.ExitCode()
}

// Kill stops the process at once with SIGKILL and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	select {
	case <-p.exited:
	case <-ctx.Done():
	}
}
