package main

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/util"
)

// openControl opens the targets control stream of a tunnel peer.
func openControl(t *testing.T, peer *streamPeer) *yamux.Stream {
	t.Helper()
	control, err := peer.session.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { control.Close() })
	return control
}

// announce sends targets on a control stream and returns the proxy's answer.
func announce(t *testing.T, control io.ReadWriter, targets ...string) util.AnnouncementAnswer {
	t.Helper()
	var announced util.Announcement
	for _, target := range targets {
		announced.Targets = append(announced.Targets, util.AnnouncedTarget{Target: target})
	}
	if err := util.WriteTargetsMessage(control, announced); err != nil {
		t.Fatal(err)
	}
	var answer util.AnnouncementAnswer
	if err := util.ReadTargetsMessage(control, &answer); err != nil {
		t.Fatal(err)
	}
	return answer
}

// registeredTargets returns the targets the hub knows, sorted.
func (tp *testProxy) registeredTargets() []string {
	var out []string
	for _, c := range tp.hub.Clients(0, 0) {
		if c.Target != "" {
			out = append(out, c.Target)
		}
	}
	sort.Strings(out)
	return out
}

// silentPeer answers no scrape.
func silentPeer(io.Writer, *http.Request) bool { return false }

func TestAnAnnouncementOfMoreTargetsThanTheBoundIsRefusedWholeAndTheTargetsInForceStay(t *testing.T) {
	cfg := defaultConfig()
	cfg.maxTargetsPerClient = 2
	tp := startProxy(t, cfg)
	control := openControl(t, dialStreamPeer(t, tp, "gw", util.TunnelProtocolReuse, silentPeer))
	if answer := announce(t, control, "a.example:9100", "b.example:9100"); len(answer.Refused) > 0 {
		t.Fatalf("refused within the bound: %+v", answer.Refused)
	}
	answer := announce(t, control, "a.example:9100", "c.example:9100", "d.example:9100")
	if len(answer.Refused) != 3 {
		t.Fatalf("refused %+v, want all 3 targets", answer.Refused)
	}
	for _, r := range answer.Refused {
		if !strings.Contains(r.Reason, "--registration.max-targets-per-client") {
			t.Errorf("refused %s: %q does not name the bound", r.Target, r.Reason)
		}
	}
	if got := fmt.Sprint(tp.registeredTargets()); got != "[a.example:9100 b.example:9100]" {
		t.Errorf("targets after a refused announcement: %s, want the previous ones", got)
	}
}

func TestTheAnswerToAnAnnouncementOfThousandsOfBadTargetsFitsInOneMessage(t *testing.T) {
	cfg := defaultConfig()
	cfg.maxTargetsPerClient = 10000
	tp := startProxy(t, cfg)
	control := openControl(t, dialStreamPeer(t, tp, "gw", util.TunnelProtocolReuse, silentPeer))
	// Each refusal quotes the name, whose host is too long to be valid:
	// named in full, the refusals would take 7 MiB.
	var bad []string
	for i := range 5000 {
		bad = append(bad, fmt.Sprintf("%s%d:9100", strings.Repeat("a", 700), i))
	}
	answer := announce(t, control, bad...)
	if len(answer.Refused) != maxRefusalsAnswered+1 {
		t.Fatalf("%d refusals in the answer, want %d and one counting the rest", len(answer.Refused), maxRefusalsAnswered)
	}
	if last := answer.Refused[maxRefusalsAnswered]; !strings.Contains(last.Reason, fmt.Sprint(5000-maxRefusalsAnswered)) {
		t.Errorf("the last refusal %q does not count the rest", last.Reason)
	}
}

func TestTheLongestRefusalsAnAnswerNamesFitInOneMessage(t *testing.T) {
	var f refusals
	// "<" is escaped into 6 bytes of JSON.
	longest := strings.Repeat("<", 10*util.MaxTargetsMessage/maxRefusalsAnswered)
	for range 2 * maxRefusalsAnswered {
		f.refuse(longest, fmt.Errorf("%s", longest))
	}
	if err := util.WriteTargetsMessage(io.Discard, f.done()); err != nil {
		t.Error(err)
	}
}

func TestATunnelsAnnouncementsAreAppliedAtMostOncePerInterval(t *testing.T) {
	tp := startProxy(t, defaultConfig())
	control := openControl(t, dialStreamPeer(t, tp, "gw", util.TunnelProtocolReuse, silentPeer))
	announce(t, control, "a.example:9100")
	first := time.Now()
	announce(t, control, "b.example:9100")
	if elapsed := time.Since(first); elapsed < minAnnouncementInterval {
		t.Errorf("a second announcement was applied %v after the first, want at least %v", elapsed, minAnnouncementInterval)
	}
	if got := fmt.Sprint(tp.registeredTargets()); got != "[b.example:9100]" {
		t.Errorf("targets %s, want the second announcement's", got)
	}
}
