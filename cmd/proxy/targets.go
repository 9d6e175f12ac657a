package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/internal/rendezvous"
	"github.com/rancher/pushprox/util"
)

// targetsAnswerTimeout bounds writing the answer to an announcement: a
// client that does not read its control stream cannot hold the goroutine
// that serves it past this.
const targetsAnswerTimeout = 10 * time.Second

// pollTarget fills in the target a poll is for, when it names one
// (util.HeaderTarget): a target of a client's targets file, on the host the
// poll's body names, announced by the client named in util.HeaderVia. With
// --auth.bind-fqdn-to-cert, the certificate must name that client too, so
// that no client counts its targets against another's bound.
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
	c.Target, c.Via = name, rendezvous.NormalFQDN(via)
	return nil
}

// serveTargets serves the targets control stream of a tunnel until the
// tunnel ends: the first stream the client opens. It applies each
// announcement read from it and answers which targets were refused.
// Further streams opened by the client are closed at once.
func (p *proxy) serveTargets(session *yamux.Session, attached *rendezvous.Session, r *http.Request, fqdn string) {
	logger := log.With(p.logger, "fqdn", fqdn, "remote", r.RemoteAddr)
	var controlDone sync.WaitGroup
	defer controlDone.Wait()
	control := false
	for {
		stream, err := session.AcceptStream()
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
			for {
				var announced util.Announcement
				if err := util.ReadTargetsMessage(stream, &announced); err != nil {
					if !errors.Is(err, io.EOF) && !session.IsClosed() {
						level.Warn(logger).Log("msg", "targets control stream failed", "err", err)
					}
					return
				}
				answer := p.applyTargets(r, attached, announced)
				level.Debug(logger).Log("msg", "targets announced", "targets", len(announced.Targets), "refused", len(answer.Refused))
				_ = stream.SetWriteDeadline(time.Now().Add(targetsAnswerTimeout))
				if err := util.WriteTargetsMessage(stream, answer); err != nil {
					return
				}
			}
		}()
	}
}

// applyTargets makes announced the targets of the tunnel: each checked as a
// poll of its host would be (its name, its labels, and with
// --auth.bind-fqdn-to-cert the client's certificate), within the bound of
// targets per client. It returns those refused, with the reason.
func (p *proxy) applyTargets(r *http.Request, attached *rendezvous.Session, announced util.Announcement) util.AnnouncementAnswer {
	var answer util.AnnouncementAnswer
	refuse := func(name string, err error) {
		answer.Refused = append(answer.Refused, util.RefusedTarget{Target: name, Reason: err.Error()})
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
	for i, err := range attached.SetTargets(targets) {
		if err != nil {
			refuse(targets[i].Name, err)
		}
	}
	return answer
}
