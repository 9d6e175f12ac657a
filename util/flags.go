package util

import (
	"fmt"
	"os"

	"github.com/alecthomas/kingpin/v2"
)

// ParseFlags parses args with app. Unlike app.Parse, an invalid value is
// reported with the name of its flag.
func ParseFlags(app *kingpin.Application, args []string) error {
	_, err := app.Parse(args)
	if err == nil {
		return nil
	}
	// kingpin does not say which flag a value error belongs to; find the
	// first flag whose value does not parse.
	ctx, ctxErr := app.ParseContext(args)
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
	for _, model := range app.Model().Flags {
		value := os.Getenv(model.Envar)
		if model.Envar == "" || value == "" {
			continue
		}
		if setErr := model.Value.Set(value); setErr != nil {
			return fmt.Errorf("--%s (from $%s): %w", model.Name, model.Envar, setErr)
		}
	}
	return err
}
