package util

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
)

func TestLogLinesNameTheLineThatLogged(t *testing.T) {
	for _, format := range LogFormats {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			logger, err := NewLogger(&out, "debug", format)
			if err != nil {
				t.Fatal(err)
			}
			for name, logAndLine := range map[string]func() int{
				"the logger itself": func() int { logger.Log("msg", "x"); return line() },
				"a logger with more context": func() int {
					log.With(logger, "k", "v").Log("msg", "x")
					return line() - 1
				},
				"a level": func() int { level.Info(logger).Log("msg", "x"); return line() },
				"a level of a logger with more context": func() int {
					level.Debug(log.With(log.With(logger, "a", 1), "b", 2)).Log("msg", "x")
					return line() - 1
				},
			} {
				out.Reset()
				want := fmt.Sprintf("logging_test.go:%d", logAndLine())
				if !strings.Contains(out.String(), want) {
					t.Errorf("%s wrote %q, want the caller %s", name, out.String(), want)
				}
			}
		})
	}
}

// line is the line it is called from.
func line() int {
	_, _, n, _ := runtime.Caller(1)
	return n
}
