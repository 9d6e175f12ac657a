package main

import (
	"log/slog"
	"net"
	"net/http"

	"github.com/go-kit/log"
	"github.com/prometheus/exporter-toolkit/web"
	sloggokit "github.com/tjhop/slog-gokit"
)

// serveMetrics serves the client's own metrics on ln with the exporter
// toolkit, which adds TLS and basic authentication when webConfigFile names
// a web config, re-read as it changes.
func serveMetrics(srv *http.Server, ln net.Listener, webConfigFile string, logger log.Logger) error {
	addresses := []string{ln.Addr().String()}
	systemdSocket := false
	flags := &web.FlagConfig{
		WebListenAddresses: &addresses,
		WebSystemdSocket:   &systemdSocket,
		WebConfigFile:      &webConfigFile,
	}
	return web.Serve(ln, srv, flags, slogLogger(logger))
}

// slogLogger passes the records of libraries that log with log/slog (the
// exporter toolkit) to a go-kit logger, so that every line has the same
// format, level filter and output as the binary's own. Every level is
// handed on: the go-kit logger's filter decides. The handler's time and
// caller are dropped, as the binary's logger stamps its own ts and caller.
func slogLogger(logger log.Logger) *slog.Logger {
	stamped := log.LoggerFunc(func(keyvals ...any) error {
		kept := make([]any, 0, len(keyvals))
		for i := 0; i+1 < len(keyvals); i += 2 {
			if key, _ := keyvals[i].(string); key == slog.TimeKey || key == "caller" {
				continue
			}
			kept = append(kept, keyvals[i], keyvals[i+1])
		}
		return logger.Log(kept...)
	})
	return slog.New(sloggokit.NewGoKitHandler(stamped, slog.LevelDebug))
}
