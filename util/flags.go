package util

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/common/version"
)

// App is a command line as both binaries have it: -h, --version, usage and
// errors written to one writer, every flag but --help and --version also
// settable as an environment variable (PUSHPROX_PROXY_WEB_LISTEN_ADDRESS
// for --web.listen-address of pushprox-proxy; a repeatable flag takes one
// value per line), and --help and --version answered without exiting.
type App struct {
	*kingpin.Application
	answered bool // --help or --version was given and answered
}

// NewApp returns the command line of the named program.
func NewApp(name, help string, w io.Writer) *App {
	a := &App{Application: kingpin.New(name, help)}
	a.HelpFlag.Short('h')
	a.Version(version.Print(name))
	a.UsageWriter(w)
	a.ErrorWriter(w)
	a.Terminate(func(int) { a.answered = true })
	a.DefaultEnvars()
	// Asking for help or the version is not a setting: an environment
	// variable must not make every run print and stop.
	a.HelpFlag.NoEnvar()
	a.VersionFlag.NoEnvar()
	return a
}

// LogFlags adds --log.level and --log.format.
func (a *App) LogFlags(lvl, format *string) {
	a.Flag("log.level", "Only log messages with the given severity or above: "+fmt.Sprint(LogLevels)).
		Default("info").EnumVar(lvl, LogLevels...)
	a.Flag("log.format", "Output format of log messages: "+fmt.Sprint(LogFormats)).
		Default("logfmt").EnumVar(format, LogFormats...)
}

// Parse parses args. It reports answered when --help or --version was given:
// the program has nothing more to do, whatever else args hold. Unlike
// kingpin's Parse, an invalid value is reported with the name of its flag.
func (a *App) Parse(args []string) (answered bool, err error) {
	_, err = a.Application.Parse(args)
	if a.answered {
		return true, nil
	}
	if err == nil {
		return false, nil
	}
	return false, a.nameFlag(args, err)
}

// nameFlag finds the flag whose value made parsing fail, as kingpin does
// not say.
func (a *App) nameFlag(args []string, err error) error {
	ctx, ctxErr := a.ParseContext(args)
	if ctxErr != nil {
		return err
	}
	for _, element := range ctx.Elements {
		flag, ok := element.Clause.(*kingpin.FlagClause)
		if !ok || element.Value == nil {
			continue
		}
		model := flag.Model()
		if setErr := model.Value.Set(*element.Value); setErr != nil {
			return fmt.Errorf("--%s: %w", model.Name, setErr)
		}
	}
	for _, model := range a.Model().Flags {
		value := os.Getenv(model.Envar)
		if model.Envar == "" || value == "" {
			continue
		}
		// A repeatable flag takes one value per line, as kingpin splits it.
		values := []string{value}
		if repeatable, ok := model.Value.(interface{ IsCumulative() bool }); ok && repeatable.IsCumulative() {
			values = strings.Split(strings.ReplaceAll(strings.TrimRight(value, "\r\n"), "\r\n", "\n"), "\n")
		}
		for _, v := range values {
			if setErr := model.Value.Set(v); setErr != nil {
				return fmt.Errorf("--%s (from $%s): %w", model.Name, model.Envar, setErr)
			}
		}
	}
	return err
}

// NewRegistry returns a registry with the Go runtime, process and
// pushprox_build_info metrics that both binaries export.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("pushprox"),
	)
	return reg
}
