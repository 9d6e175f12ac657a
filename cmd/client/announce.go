package main

import (
	"context"
	"net/http"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/hashicorp/yamux"

	"github.com/rancher/pushprox/util"
)

// serveTargetsOnTunnel makes the targets of the targets file reachable
// through a proxy while the client's tunnel to it lasts: announced on the
// tunnel's control stream where the proxy's 101 (resp) says it takes one,
// polled for otherwise, so that a proxy that routes tunnels by FQDN only
// still reaches them. stop ends it and waits.
func (c *client) serveTargetsOnTunnel(ctx, scrapeCtx context.Context, up *upstream, session *yamux.Session, resp *http.Response, logger log.Logger) (stop func()) {
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
// ends or the stream fails. Targets the proxy refuses are logged with its
// reason.
func (c *client) announceTargets(ctx context.Context, session *yamux.Session, logger log.Logger) {
	stream, err := session.OpenStream()
	if err != nil {
		level.Warn(logger).Log("msg", "cannot open the targets control stream", "err", err)
		return
	}
	defer stream.Close()
	// Ending ctx unblocks a read of the proxy's answer.
	stopClosing := context.AfterFunc(ctx, func() { stream.Close() })
	defer stopClosing()
	for {
		list, changed := c.targets.current()
		if err := util.WriteTargetsMessage(stream, list.announcement()); err != nil {
			if ctx.Err() == nil {
				level.Warn(logger).Log("msg", "announcing targets failed", "err", err)
			}
			return
		}
		var answer util.AnnouncementAnswer
		if err := util.ReadTargetsMessage(stream, &answer); err != nil {
			if ctx.Err() == nil {
				level.Warn(logger).Log("msg", "reading the answer to the targets announced failed", "err", err)
			}
			return
		}
		for _, refused := range answer.Refused {
			level.Warn(logger).Log("msg", "proxy refused a target", "target", refused.Target, "err", refused.Reason)
		}
		level.Info(logger).Log("msg", "targets announced", "targets", len(list.targets), "refused", len(answer.Refused))
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}
