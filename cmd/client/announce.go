package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"

	"github.com/rancher/pushprox/internal/mux"
	"github.com/rancher/pushprox/util"
)

// serveTargetsOnTunnel makes the targets of the targets file reachable
// through a proxy while the client's tunnel to it lasts: announced on the
// tunnel's control stream where the proxy's 101 (resp) says it takes one,
// polled for otherwise, so that a proxy that routes tunnels by FQDN only
// still reaches them. stop ends it and waits.
func (c *client) serveTargetsOnTunnel(ctx, scrapeCtx context.Context, up *upstream, session *mux.Session, resp *http.Response, logger log.Logger) (stop func()) {
	if c.targets == nil {
		return func() {}
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp.Header.Get(util.HeaderTargets) == util.TargetsVersion {
			c.announceTargets(runCtx, session, logger)
			return
		}
		level.Info(logger).Log("msg", "proxy takes no targets on tunnels, polling for them")
		c.pollTargets(runCtx, scrapeCtx, up)
	}()
	return func() {
		cancel()
		<-done
	}
}

// announceTargets opens the tunnel's control stream and announces the
// whole list of targets on it, at first and after each change, until ctx
// ends. Targets the proxy refuses are logged with its reason. A list too
// large for one message is not sent: the client waits for the next change
// (a targets file is refused when read if it is too large, so only a list
// made otherwise gets there). A control stream that fails ends the
// tunnel: the proxy takes one control stream per tunnel, so the client
// reconnects and announces on the new tunnel rather than going silent on
// this one.
func (c *client) announceTargets(ctx context.Context, session *mux.Session, logger log.Logger) {
	stream, err := session.Open()
	if err != nil {
		if ctx.Err() == nil {
			level.Warn(logger).Log("msg", "cannot open the targets control stream, ending the tunnel", "err", err)
			session.Close()
		}
		return
	}
	defer stream.Close()
	// Ending ctx unblocks a read of the proxy's answer.
	stopClosing := context.AfterFunc(ctx, func() { stream.Close() })
	defer stopClosing()
	for {
		list, changed := c.targets.current()
		if err := c.announceOnce(stream, list, logger); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !errors.Is(err, util.ErrTargetsMessageTooLarge) {
				level.Warn(logger).Log("msg", "targets control stream failed, ending the tunnel", "err", err)
				session.Close()
				return
			}
			level.Error(logger).Log("msg", "targets not announced, waiting for the next change", "targets", len(list.targets), "err", err)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// announceOnce announces list on the control stream and logs the proxy's
// answer.
func (c *client) announceOnce(stream *mux.Stream, list *targetList, logger log.Logger) error {
	if err := util.WriteTargetsMessage(stream, list.announcement()); err != nil {
		return fmt.Errorf("announcing targets: %w", err)
	}
	var answer util.AnnouncementAnswer
	if err := util.ReadTargetsMessage(stream, &answer); err != nil {
		return fmt.Errorf("reading the answer to the targets announced: %w", err)
	}
	for _, refused := range answer.Refused {
		level.Warn(logger).Log("msg", "proxy refused a target", "target", refused.Target, "err", refused.Reason)
	}
	level.Info(logger).Log("msg", "targets announced", "targets", len(list.targets), "refused", len(answer.Refused))
	return nil
}
