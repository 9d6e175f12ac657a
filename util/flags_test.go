package util

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelpAndVersionCannotBeSetFromTheEnvironment(t *testing.T) {
	t.Setenv("PUSHPROX_TEST_HELP", "true")
	t.Setenv("PUSHPROX_TEST_VERSION", "true")
	var out bytes.Buffer
	app := NewApp("pushprox-test", "test", &out)
	answered, err := app.Parse(nil)
	if err != nil || answered {
		t.Fatalf("Parse = %v, %v with PUSHPROX_TEST_HELP and _VERSION set; want a normal run", answered, err)
	}
	out.Reset()
	if answered, _ := app.Parse([]string{"--help"}); !answered {
		t.Fatal("--help not answered")
	}
	for _, name := range []string{"PUSHPROX_TEST_HELP", "PUSHPROX_TEST_VERSION"} {
		if strings.Contains(out.String(), name) {
			t.Errorf("usage lists %s as settable:\n%s", name, out.String())
		}
	}
}

func TestARepeatableFlagTakesOneValuePerLineFromTheEnvironment(t *testing.T) {
	t.Setenv("PUSHPROX_TEST_LABEL", "a=1\r\nb=2\n")
	t.Run("values", func(t *testing.T) {
		app := NewApp("pushprox-test", "test", &bytes.Buffer{})
		var labels []string
		app.Flag("label", "repeatable").StringsVar(&labels)
		if _, err := app.Parse(nil); err != nil {
			t.Fatal(err)
		}
		if strings.Join(labels, " ") != "a=1 b=2" {
			t.Errorf("labels %q, want a=1 and b=2", labels)
		}
	})

	t.Setenv("PUSHPROX_TEST_PORT", "not-a-port")
	app := NewApp("pushprox-test", "test", &bytes.Buffer{})
	var labels []string
	app.Flag("label", "repeatable").StringsVar(&labels)
	app.Flag("port", "one number").Int()
	_, err := app.Parse(nil)
	if err == nil || !strings.Contains(err.Error(), "--port (from $PUSHPROX_TEST_PORT)") {
		t.Errorf("Parse error %v, want one naming --port and its variable", err)
	}
	if strings.Contains(err.Error(), "label") {
		t.Errorf("the repeatable flag's lines were taken as one value: %v", err)
	}
}
