package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// targetsAnswerTimeout bounds writing the answer to an announcement: a
// client that does not read its control stream cannot hold the goroutine
// that serves it past this.
const targetsAnswerTimeout = 10 * time.Second

// minAnnouncementInterval is the least time between two announcements
// applied on one tunnel. Applying one takes the hub's lock for time in
// proportion to its targets (up to --registration.max-targets-per-client
// registrations); once a second bounds the share of that lock one tunnel
// can take, whatever it sends. A real client announces only when its file
// changes, which it checks every 5 s by default (--targets.file.refresh-
// interval), so it seldom waits. The next message is not read while
// waiting: what the client sends meanwhile is bounded by the stream's
// receive window (util.TunnelStreamWindow), past which the client waits.
const minAnnouncementInterval = time.Second

// Bounds of the answer to an announcement, so that it always fits in one
// control stream message (util.MaxTargetsMessage, 4 MiB) however many
// targets were refused and however long their names: JSON escapes a byte
// into at most 6 ("<" is \u003c), so an entry takes at most
// 6*(maxRefusalTargetBytes+maxRefusalReasonBytes) plus 26 bytes of
// framing, 9242 bytes, and maxRefusalsAnswered+1 of them (the last one
// counting the rest) 2.4 MiB.
const (
	// maxRefusalsAnswered is how many refused targets an answer names;
	// far above what a file with mistakes in it refuses, and a client
	// refused more learns how many.
	maxRefusalsAnswered = 256
	// maxRefusalTargetBytes is how much of a refused target's name is
	// repeated: a valid host:port is at most 259 bytes (a 253-byte host
	// name and a port), so only names refused for their length are cut.
	maxRefusalTargetBytes = 512
	// maxRefusalReasonBytes is how much of a reason is sent: reasons
	// quote at most a name and a label.
	maxRefusalReasonBytes = 1024
)

// scrapePort is the port a scrape's target URL u names, or the default of
// the scheme the client will scrape it over (the URL parameter _scheme,
// else http), as the client reads it: a target of a client's targets file
// is routed to that client only on its port.
func scrapePort(u *url.URL) string {
	if port := u.Port(); port != "" {
		return port
	}
	if scheme := u.Query().Get("_scheme"); scheme != "" {
		return map[string]string{"http": "80", "https": "443"}[scheme]
	}
	return map[string]string{"http": "80", "https": "443"}[u.Scheme]
}

// targetsOwner is who the targets that the client of r announces as fqdn
// count against (rendezvous.Client.Owner): the client's FQDN with who is
// asking, its identity (as requestIdentity returns it) when the proxy
// authenticated it and otherwise its source address (as the rate limit
// counts sources). A poll that names another client in util.HeaderVia so
// spends a bound of its own, never that client's.
func targetsOwner(r *http.Request, identity, fqdn string) string {
	who := identity
	if who == "" || !authenticated(r) && !authenticatedIdentity(who) {
		who = "source:" + sourceOf(r.RemoteAddr).String()
	}
	return rendezvous.NormalFQDN(fqdn) + " " + who
}

// pollTarget fills in the target a poll is for, when it names one
// (util.HeaderTarget): a target of a client's targets file, on the host the
// poll's body names, announced by the client named in util.HeaderVia. The
// target counts against that client as the poller is (targetsOwner), so
// that no poller spends another's bound; with --auth.bind-fqdn-to-cert,
// the certificate must name that client too.
func (p *proxy) pollTarget(r *http.Request, c *rendezvous.Client) error {
	raw := r.Header.Get(util.HeaderTarget)
	if raw == "" {
		return nil
	}
	name, host, err := util.ParseTarget(raw)
	if err != nil {
		return &clientError{http.StatusBadRequest, fmt.Errorf("bad poll: %w", err)}
	}
	if rendezvous.NormalFQDN(host) != rendezvous.NormalFQDN(c.FQDN) {
		return &clientError{http.StatusBadRequest, fmt.Errorf("bad poll: target %q is not on the polled host %q", name, c.FQDN)}
	}
	via, err := util.ParseFQDN(r.Header.Get(util.HeaderVia))
	if err != nil {
		return &clientError{http.StatusBadRequest, fmt.Errorf("bad poll: %s: %w", util.HeaderVia, err)}
	}
	if err := p.authorizePoll(r, via); err != nil {
		return &clientError{http.StatusForbidden, err}
	}
	c.Target, c.Via, c.Owner = name, rendezvous.NormalFQDN(via), targetsOwner(r, c.Identity, via)
	return nil
}

// serveTargets serves the targets control stream of a tunnel until the
// tunnel ends: the first stream the client opens. It applies each
// announcement read from it and answers which targets were refused.
// Further streams opened by the client are closed at once.
func (p *proxy) serveTargets(session *mux.Session, attached *rendezvous.Session, r *http.Request, fqdn string) {
	logger := log.With(p.logger, "fqdn", fqdn, "remote", r.RemoteAddr)
	var controlDone sync.WaitGroup
	defer controlDone.Wait()
	control := false
	for {
		stream, err := session.Accept()
		if err != nil {
			return
		}
		if control {
			stream.Close()
			continue
		}
		control = true
		controlDone.Add(1)
		go func() {
			defer controlDone.Done()
			defer stream.Close()
			var applied time.Time
			for {
				if !applied.IsZero() && !p.waitBeforeAnnouncement(session, applied) {
					return
				}
				var announced util.Announcement
				if err := util.ReadTargetsMessage(stream, &announced); err != nil {
					if !errors.Is(err, io.EOF) && !session.IsClosed() {
						level.Warn(logger).Log("msg", "targets control stream failed", "err", err)
					}
					return
				}
				answer := p.applyTargets(r, attached, announced)
				applied = time.Now()
				level.Debug(logger).Log("msg", "targets announced", "targets", len(announced.Targets), "refused", len(answer.Refused))
				_ = stream.SetWriteDeadline(time.Now().Add(targetsAnswerTimeout))
				if err := util.WriteTargetsMessage(stream, answer); err != nil {
					return
				}
			}
		}()
	}
}

// waitBeforeAnnouncement waits until minAnnouncementInterval has passed
// since the tunnel's last announcement was applied, and reports whether
// the tunnel is still there.
func (p *proxy) waitBeforeAnnouncement(session *mux.Session, applied time.Time) bool {
	wait := time.Until(applied.Add(minAnnouncementInterval))
	if wait <= 0 {
		return true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-session.Done():
		return false
	}
}

// refusals collects the refused targets of an answer, within its bounds.
type refusals struct {
	answer util.AnnouncementAnswer
	more   int // refused beyond maxRefusalsAnswered
}

func (f *refusals) refuse(name string, err error) {
	if len(f.answer.Refused) == maxRefusalsAnswered {
		f.more++
		return
	}
	f.answer.Refused = append(f.answer.Refused, util.RefusedTarget{
		Target: cutUTF8(name, maxRefusalTargetBytes),
		Reason: cutUTF8(err.Error(), maxRefusalReasonBytes),
	})
}

// done returns the answer, its last entry counting the refusals it does
// not name.
func (f *refusals) done() util.AnnouncementAnswer {
	if f.more > 0 {
		f.answer.Refused = append(f.answer.Refused, util.RefusedTarget{
			Reason: fmt.Sprintf("%d more targets refused, not named here (at most %d are)", f.more, maxRefusalsAnswered),
		})
	}
	return f.answer
}

// cutUTF8 returns at most n bytes of s, cut at a character boundary.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// applyTargets makes announced the targets of the tunnel: each checked as a
// poll of its host would be (its name, its labels, and with
// --auth.bind-fqdn-to-cert the client's certificate), within the bound of
// targets per client. It returns those refused, with the reason. An
// announcement of more targets than the bound is refused whole before
// anything else, and the tunnel's targets stay as they were.
func (p *proxy) applyTargets(r *http.Request, attached *rendezvous.Session, announced util.Announcement) util.AnnouncementAnswer {
	var refused refusals
	refuse := refused.refuse
	if n := len(announced.Targets); n > p.cfg.maxTargetsPerClient {
		err := fmt.Errorf("the announcement lists %d targets, at most %d allowed (--registration.max-targets-per-client); none of it applied", n, p.cfg.maxTargetsPerClient)
		for _, t := range announced.Targets {
			refuse(t.Target, err)
		}
		return refused.done()
	}
	var targets []rendezvous.Target
	seen := map[string]bool{}
	for _, t := range announced.Targets {
		name, host, err := util.ParseTarget(t.Target)
		if err == nil && seen[name] {
			err = errors.New("listed twice")
		}
		if err == nil {
			err = util.CheckLabels(t.Labels)
		}
		if err == nil {
			err = p.authorizePoll(r, host)
		}
		if err != nil {
			refuse(t.Target, err)
			continue
		}
		seen[name] = true
		targets = append(targets, rendezvous.Target{Name: name, Host: host, Labels: t.Labels})
	}
	for i, err := range attached.SetTargets(targets, p.admitTargets(r, attached.Identity())) {
		if err != nil {
			refuse(targets[i].Name, err)
		}
	}
	return refused.done()
}
