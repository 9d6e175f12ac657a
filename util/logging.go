package util

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"strconv"
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
	return log.With(logger, "ts", log.DefaultTimestampUTC, "caller", log.Valuer(lazyCaller)), nil
}

// lazyCaller is log.DefaultCaller made cheap for the records a level
// filter drops, such as a debug line per scrape: it takes the program
// counter of the call to Log when the record is made, and finds its file
// and line only when the record is written. Finding them cost a client
// about 4 % of its CPU per scrape.
func lazyCaller() any {
	var pc [1]uintptr
	// As log.DefaultCaller, three frames up from here: bindValues,
	// the context's Log and the call to it; Callers counts itself too.
	runtime.Callers(4, pc[:])
	return callerPC(pc[0])
}

// callerPC is where a record was logged, written as file:line.
type callerPC uintptr

func (pc callerPC) String() string {
	frame, _ := runtime.CallersFrames([]uintptr{uintptr(pc)}).Next()
	return filepath.Base(frame.File) + ":" + strconv.Itoa(frame.Line)
}

// MarshalText writes pc as String does, for the log formats that encode
// values as text.
func (pc callerPC) MarshalText() ([]byte, error) { return []byte(pc.String()), nil }

// OneLine flattens a multi-line error, such as a YAML error listing one
// problem a line, so that it reads as one line in logs and flag errors.
func OneLine(err error) error {
	return errors.New(strings.Join(strings.Fields(err.Error()), " "))
}
