package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"go.yaml.in/yaml/v2"

	"github.com/rancher/pushprox/util"
)

// A targets file (--targets.file) lists, in Prometheus' file_sd format,
// the host:port targets the client answers for besides its own FQDN. The
// client checks it for changes every --targets.file.refresh-interval and on
// SIGHUP; a file that does not parse leaves the previous list in place.

// maxTargetsFileBytes bounds what is read of a targets file: far above a
// file of the most targets with the most labels each, so that a wrong path
// (a log, a device) is not read whole.
const maxTargetsFileBytes = 16 << 20

// checkTargetsFileName says why a targets file's name gives no format:
// as Prometheus' file_sd, the extension says JSON or YAML.
func checkTargetsFileName(name string) error {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json", ".yml", ".yaml":
		return nil
	}
	return fmt.Errorf("--targets.file must end in .json, .yml or .yaml, which says its format, not %q", filepath.Base(name))
}

// target is one entry of a targets file.
type target struct {
	name   string            // host:port as the file writes it
	host   string            // its host, as written
	labels map[string]string // its group's labels over the client's --label
}

// targetList is one version of the targets file, read only once made.
type targetList struct {
	targets []target
	// byAddress holds the targets by host (as DNS compares it) and port.
	byAddress map[string]bool
}

// has says whether the list holds host:port.
func (l *targetList) has(host, port string) bool {
	return l.byAddress[net.JoinHostPort(normalizeHost(host), port)]
}

// announcement is the list as a tunnel announces it.
func (l *targetList) announcement() util.Announcement {
	a := util.Announcement{Targets: make([]util.AnnouncedTarget, 0, len(l.targets))}
	for _, t := range l.targets {
		a.Targets = append(a.Targets, util.AnnouncedTarget{Target: t.name, Labels: t.labels})
	}
	return a
}

// targetGroup is a target group of the file_sd format.
type targetGroup struct {
	Targets []string          `json:"targets" yaml:"targets"`
	Labels  map[string]string `json:"labels" yaml:"labels"`
}

// parseTargets reads a targets file's content, in the format its name's
// extension says, into a list of at most max targets, each group's labels
// over clientLabels.
func parseTargets(name string, content []byte, clientLabels map[string]string, max int) (*targetList, error) {
	var groups []targetGroup
	var err error
	if strings.EqualFold(filepath.Ext(name), ".json") {
		decoder := json.NewDecoder(bytes.NewReader(content))
		decoder.DisallowUnknownFields()
		err = decoder.Decode(&groups)
	} else {
		err = yaml.UnmarshalStrict(content, &groups)
	}
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	list := &targetList{byAddress: map[string]bool{}}
	for _, group := range groups {
		labels := maps.Clone(clientLabels)
		if labels == nil && len(group.Labels) > 0 {
			labels = map[string]string{}
		}
		maps.Copy(labels, group.Labels)
		if err := util.CheckLabels(labels); err != nil {
			return nil, fmt.Errorf("%s: labels of targets %v: %w", name, group.Targets, err)
		}
		for _, raw := range group.Targets {
			targetName, host, err := util.ParseTarget(raw)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			_, port, _ := net.SplitHostPort(targetName)
			address := net.JoinHostPort(normalizeHost(host), port)
			if list.byAddress[address] {
				return nil, fmt.Errorf("%s: target %q is listed twice", name, targetName)
			}
			if len(list.targets) == max {
				return nil, fmt.Errorf("%s: more than %d targets (--targets.max)", name, max)
			}
			list.byAddress[address] = true
			list.targets = append(list.targets, target{name: targetName, host: host, labels: labels})
		}
	}
	if err := util.CheckAnnouncement(list.announcement()); err != nil {
		return nil, fmt.Errorf("%s: cannot be announced on a tunnel, list fewer targets or shorter labels: %w", name, err)
	}
	return list, nil
}

// targetsFile is the targets file as last read. Its methods are safe for
// concurrent use.
type targetsFile struct {
	path         string
	clientLabels map[string]string
	max          int
	metrics      *metrics

	mu sync.Mutex
	// list is the list in force and changed is closed when it is
	// replaced; guarded by mu.
	list    *targetList
	changed chan struct{}
	// applied is the content of list, and failed the last content that
	// did not parse, so that an unchanged file is neither parsed nor
	// reported again; guarded by mu.
	applied, failed []byte
}

// newTargetsFile reads the targets file at path; it must parse.
func newTargetsFile(path string, clientLabels map[string]string, max int, m *metrics) (*targetsFile, error) {
	f := &targetsFile{path: path, clientLabels: clientLabels, max: max, metrics: m, list: &targetList{}, changed: make(chan struct{})}
	if _, err := f.refresh(true); err != nil {
		return nil, err
	}
	return f, nil
}

// current returns the list in force, and a channel closed when it is
// replaced.
func (f *targetsFile) current() (*targetList, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.list, f.changed
}

// refresh reads the file and puts its list in force if it changed and
// parses; it reports whether it put a new list in force. A file that does
// not parse keeps the previous list; it is reported once, or again when
// force is set (a reload asked for).
func (f *targetsFile) refresh(force bool) (bool, error) {
	content, err := readBounded(f.path, maxTargetsFileBytes)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil && f.applied != nil && bytes.Equal(content, f.applied) {
		return false, nil
	}
	if err == nil && !force && f.failed != nil && bytes.Equal(content, f.failed) {
		return false, nil
	}
	var list *targetList
	if err == nil {
		list, err = parseTargets(f.path, content, f.clientLabels, f.max)
	}
	if err != nil {
		f.failed = content
		f.metrics.targetsReloadOK.Set(0)
		return false, err
	}
	f.list, f.applied, f.failed = list, content, nil
	close(f.changed)
	f.changed = make(chan struct{})
	f.metrics.targets.Set(float64(len(list.targets)))
	f.metrics.targetsReloadOK.Set(1)
	f.metrics.targetsReloadTime.SetToCurrentTime()
	return true, nil
}

// watch refreshes the file every interval until ctx ends, logging changes
// and failures.
func (f *targetsFile) watch(ctx context.Context, interval time.Duration, logger log.Logger) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
		changed, err := f.refresh(false)
		switch {
		case err != nil:
			level.Error(logger).Log("msg", "targets file not reloaded, keeping the previous targets", "file", f.path, "err", err)
		case changed:
			list, _ := f.current()
			level.Info(logger).Log("msg", "targets file reloaded", "file", f.path, "targets", len(list.targets))
		}
	}
}

// readBounded reads the file at path, failing if it holds more than limit
// bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	content, err := io.ReadAll(io.LimitReader(file, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(content)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return content, nil
}

// answersFor says whether the client scrapes host:port: its own FQDN on
// any port, or a target of its targets file.
func (c *client) answersFor(host, port string) bool {
	if sameHost(host, c.cfg.fqdn) {
		return true
	}
	if c.targets == nil {
		return false
	}
	list, _ := c.targets.current()
	return list.has(host, port)
}

// errNotATarget says why a scrape for host:port is refused.
func (c *client) errNotATarget(host, port string) error {
	if c.targets == nil {
		return fmt.Errorf("target host %q is not this client's FQDN %q", host, c.cfg.fqdn)
	}
	return fmt.Errorf("target %q is neither this client's FQDN %q nor listed in %s", net.JoinHostPort(host, port), c.cfg.fqdn, c.targets.path)
}

// pollAs is who a poll loop polls as: the client itself, or a target of
// its targets file.
type pollAs struct {
	fqdn   string // the poll body
	labels string // the labels header
	target string // the target header, or empty for the client itself
}

// self is the client polling as itself.
func (c *client) self() pollAs { return pollAs{fqdn: c.cfg.fqdn, labels: c.labels} }

// pollAll polls one proxy as the client itself and, with a targets file,
// as each of its targets, until ctx ends.
func (c *client) pollAll(ctx, scrapeCtx context.Context, up *upstream) {
	if c.targets == nil {
		c.pollLoop(ctx, scrapeCtx, up, c.self())
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.pollTargets(ctx, scrapeCtx, up)
	}()
	c.pollLoop(ctx, scrapeCtx, up, c.self())
	<-done
}

// pollTargets keeps one poll loop per target of the targets file on one
// proxy, so that any proxy, the reference one too, routes a scrape of a
// target's host to the client: loops of added targets start and those of
// removed ones stop when the file changes. Scrapes already taken finish.
func (c *client) pollTargets(ctx, scrapeCtx context.Context, up *upstream) {
	var loops sync.WaitGroup
	running := map[pollAs]context.CancelFunc{} // owned by this goroutine
	defer func() {
		for _, stop := range running {
			stop()
		}
		loops.Wait()
	}()
	for {
		list, changed := c.targets.current()
		want := map[pollAs]bool{}
		for _, t := range list.targets {
			want[pollAs{fqdn: t.host, labels: util.EncodeLabels(t.labels), target: t.name}] = true
		}
		for as, stop := range running {
			if !want[as] {
				stop()
				delete(running, as)
			}
		}
		for _, as := range sortedPollAs(want) {
			if running[as] != nil {
				continue
			}
			loopCtx, stop := context.WithCancel(ctx)
			running[as] = stop
			loops.Add(1)
			go func() {
				defer loops.Done()
				c.pollLoop(loopCtx, scrapeCtx, up, as)
			}()
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

func sortedPollAs(set map[pollAs]bool) []pollAs {
	out := make([]pollAs, 0, len(set))
	for as := range set {
		out = append(out, as)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].target < out[j].target })
	return out
}
