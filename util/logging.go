package util

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
)

// LogLevels and LogFormats are the values --log.level and --log.format take.
var (
	LogLevels  = []string{"debug", "info", "warn", "error"}
	LogFormats = []string{"logfmt", "json"}
)

// NewLogger returns a logger writing to w in the given format that drops
// messages below the given level, with a timestamp and caller on each line.
func NewLogger(w io.Writer, lvl, format string) (log.Logger, error) {
	var logger log.Logger
	switch format {
	case "logfmt":
		logger = log.NewLogfmtLogger(log.NewSyncWriter(w))
	case "json":
		logger = log.NewJSONLogger(log.NewSyncWriter(w))
	default:
		return nil, fmt.Errorf("unknown log format %q", format)
	}
	var option level.Option
	switch lvl {
	case "debug":
		option = level.AllowDebug()
	case "info":
		option = level.AllowInfo()
	case "warn":
		option = level.AllowWarn()
	case "error":
		option = level.AllowError()
	default:
		return nil, fmt.Errorf("unknown log level %q", lvl)
	}
	logger = level.NewFilter(logger, option)
	return log.With(logger, "ts", log.DefaultTimestampUTC, "caller", log.DefaultCaller), nil
}

// OneLine flattens a multi-line error, such as a YAML error listing one
// problem a line, so that it reads as one line in logs and flag errors.
func OneLine(err error) error {
	return errors.New(strings.Join(strings.Fields(err.Error()), " "))
}
