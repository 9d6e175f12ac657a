package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/exporter-toolkit/web"
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
	return web.Serve(ln, srv, flags, slog.New(&slogHandler{logger: logger}))
}

// slogHandler passes the records of libraries that log with log/slog (the
// exporter toolkit) to the client's go-kit logger, so that every line has
// the same format, level filter and output as the client's own. Building a
// second, slog-based logger would have mixed two formats on one stream.
type slogHandler struct {
	logger log.Logger
	attrs  []any  // key-value pairs from WithAttrs
	group  string // key prefix from WithGroup
}

// Enabled implements slog.Handler; the go-kit level filter decides.
func (h *slogHandler) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	keyvals := make([]any, 0, 2+len(h.attrs)+2*r.NumAttrs())
	keyvals = append(keyvals, "msg", r.Message)
	keyvals = append(keyvals, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		keyvals = appendAttr(keyvals, h.group, a)
		return true
	})
	var logger log.Logger
	switch {
	case r.Level >= slog.LevelError:
		logger = level.Error(h.logger)
	case r.Level >= slog.LevelWarn:
		logger = level.Warn(h.logger)
	case r.Level >= slog.LevelInfo:
		logger = level.Info(h.logger)
	default:
		logger = level.Debug(h.logger)
	}
	return logger.Log(keyvals...)
}

// WithAttrs implements slog.Handler.
func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := *h
	out.attrs = append([]any(nil), h.attrs...)
	for _, a := range attrs {
		out.attrs = appendAttr(out.attrs, h.group, a)
	}
	return &out
}

// WithGroup implements slog.Handler.
func (h *slogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	out := *h
	out.group = h.group + name + "."
	return &out
}

// appendAttr appends a as key-value pairs, flattening groups into dotted
// keys.
func appendAttr(keyvals []any, prefix string, a slog.Attr) []any {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return keyvals
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, member := range a.Value.Group() {
			keyvals = appendAttr(keyvals, prefix, member)
		}
		return keyvals
	}
	return append(keyvals, prefix+a.Key, a.Value.Any())
}
