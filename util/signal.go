package util

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
)

// OnSIGHUP calls reload for every SIGHUP, logged, instead of letting the
// signal end the process, until ctx ends or the returned stop is called;
// stop waits for a reload in progress.
func OnSIGHUP(ctx context.Context, logger log.Logger, reload func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-hup:
				level.Info(logger).Log("msg", "reloading on sighup")
				reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}
