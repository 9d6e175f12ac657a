package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/util"
)

// announceTestTimeout bounds each wait of these tests, so that a hang
// fails instead of stalling the run.
const announceTestTimeout = 10 * time.Second

// tunnelPair returns the two ends of a tunnel over a pipe: the client's
// session and the proxy's.
//
// The proxy's end is hashicorp/yamux, as in proxies built before the
// client had a multiplexer of its own: the client must keep speaking to
// it.
func tunnelPair(t *testing.T) (clientEnd *mux.Session, proxyEnd *yamux.Session) {
	t.Helper()
	a, b := net.Pipe()
	clientEnd = mux.Server(a, util.TunnelConfig(0))
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	proxyEnd, err := yamux.Client(b, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		clientEnd.Close()
		proxyEnd.Close()
	})
	return clientEnd, proxyEnd
}

// put makes list the targets in force, as a reload does.
func (f *targetsFile) put(list *targetList) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = list
	close(f.changed)
	f.changed = make(chan struct{})
}

// listOf returns a list of targets host-i.example:9100, each with labels.
func listOf(n int, labels map[string]string) *targetList {
	list := &targetList{byAddress: map[string]bool{}}
	for i := range n {
		host := fmt.Sprintf("host-%d.example", i)
		list.targets = append(list.targets, target{name: host + ":9100", host: host, labels: labels})
		list.byAddress[host+":9100"] = true
	}
	return list
}

// largestLabels are labels CheckLabels takes whose announcement, for 1024
// targets, exceeds util.MaxTargetsMessage: "<" is 3 bytes in the labels
// header, 6 in JSON.
func largestLabels(t *testing.T) map[string]string {
	t.Helper()
	labels := map[string]string{}
	for i := range util.MaxLabels {
		labels[fmt.Sprintf("l%02d", i)] = strings.Repeat("<", 40)
	}
	if err := util.CheckLabels(labels); err != nil {
		t.Fatal(err)
	}
	return labels
}

// warned returns a logger and a channel that gets each message logged at
// warning level or above.
func warned() (log.Logger, <-chan string) {
	ch := make(chan string, 16)
	logger := level.NewFilter(log.LoggerFunc(func(kv ...any) error {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == "msg" {
				select {
				case ch <- fmt.Sprint(kv[i+1]):
				default:
				}
			}
		}
		return nil
	}), level.AllowWarn())
	return logger, ch
}

func TestAfterAnAnnouncementFailsALaterChangeIsStillAnnounced(t *testing.T) {
	clientEnd, proxyEnd := tunnelPair(t)
	f := &targetsFile{list: listOf(1024, largestLabels(t)), changed: make(chan struct{})}
	c := &client{targets: f}
	logger, warnings := warned()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.announceTargets(ctx, clientEnd, logger)
	}()
	defer func() {
		cancel()
		<-done
	}()
	select {
	case msg := <-warnings:
		t.Logf("the client logged %q", msg)
	case <-time.After(announceTestTimeout):
		t.Fatal("announcing a list too large for one message was not reported")
	}
	f.put(listOf(1, nil))
	control, err := proxyEnd.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var announced util.Announcement
	if err := util.ReadTargetsMessage(control, &announced); err != nil {
		t.Fatalf("the change after a failed announcement was not announced: %v", err)
	}
	if len(announced.Targets) != 1 || announced.Targets[0].Target != "host-0.example:9100" {
		t.Errorf("announced %+v, want the changed list", announced.Targets)
	}
	if err := util.WriteTargetsMessage(control, util.AnnouncementAnswer{}); err != nil {
		t.Fatal(err)
	}
}

func TestAControlStreamThatBreaksEndsTheTunnelSoThatTheClientReconnects(t *testing.T) {
	clientEnd, proxyEnd := tunnelPair(t)
	f := &targetsFile{list: listOf(1, nil), changed: make(chan struct{})}
	c := &client{targets: f}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.announceTargets(ctx, clientEnd, log.NewNopLogger())
	}()
	defer func() {
		cancel()
		<-done
	}()
	control, err := proxyEnd.AcceptStream()
	if err != nil {
		t.Fatal(err)
	}
	var announced util.Announcement
	if err := util.ReadTargetsMessage(control, &announced); err != nil {
		t.Fatal(err)
	}
	control.Close() // no answer
	select {
	case <-clientEnd.Done():
	case <-time.After(announceTestTimeout):
		t.Fatal("the tunnel lasts with no control stream: the client would never announce on it again")
	}
}

func TestATargetsFileWhoseAnnouncementWouldNotFitInOneMessageIsRefusedWithTheReason(t *testing.T) {
	path := filepath.Join(t.TempDir(), "targets.json")
	if err := os.WriteFile(path, []byte(`[{"targets":["127.0.0.2:9100"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	m := newMetrics(prometheus.NewRegistry())
	f, err := newTargetsFile(path, nil, 1024, m)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 1024 {
		names = append(names, fmt.Sprintf("%q", fmt.Sprintf("host-%d.example:9100", i)))
	}
	var labels []string
	for name, value := range largestLabels(t) {
		labels = append(labels, fmt.Sprintf("%q:%q", name, value))
	}
	large := fmt.Sprintf(`[{"targets":[%s],"labels":{%s}}]`, strings.Join(names, ","), strings.Join(labels, ","))
	if err := os.WriteFile(path, []byte(large), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := f.refresh(false); err == nil || !strings.Contains(err.Error(), "cannot be announced") {
		t.Fatalf("a file too large to announce was reloaded: %v", err)
	} else {
		t.Logf("refused: %v", err)
	}
	if ok := testutil.ToFloat64(m.targetsReloadOK); ok != 0 {
		t.Errorf("last reload successful = %v, want 0", ok)
	}
	if list, _ := f.current(); len(list.targets) != 1 || !list.has("127.0.0.2", "9100") {
		t.Errorf("the previous list was not kept")
	}
	if _, err := newTargetsFile(path, nil, 1024, m); err == nil {
		t.Error("a client started with a file too large to announce")
	}
}
