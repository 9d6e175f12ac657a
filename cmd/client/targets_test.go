package main

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTargetsFilesAreReadInTheFormatOfTheirExtensionWithLabelsOverTheClients(t *testing.T) {
	clientLabels := map[string]string{"site": "branch1", "env": "prod"}
	for name, content := range map[string]string{
		"targets.json": `[{"targets":["127.0.0.2:9100","Printer.example:9100"],"labels":{"env":"test"}},{"targets":["127.0.0.3:9100"]}]`,
		"targets.yml":  "- targets: ['127.0.0.2:9100', 'Printer.example:9100']\n  labels: {env: test}\n- targets: ['127.0.0.3:9100']\n",
	} {
		t.Run(name, func(t *testing.T) {
			list, err := parseTargets(name, []byte(content), clientLabels, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(list.targets) != 3 {
				t.Fatalf("%d targets, want 3", len(list.targets))
			}
			first, third := list.targets[0], list.targets[2]
			if first.name != "127.0.0.2:9100" || first.labels["env"] != "test" || first.labels["site"] != "branch1" {
				t.Errorf("first target %+v, want 127.0.0.2:9100 with env=test over the client's labels", first)
			}
			if third.labels["env"] != "prod" {
				t.Errorf("third target %+v, want the client's labels", third)
			}
			if !list.has("printer.EXAMPLE.", "9100") || list.has("printer.example", "9101") || list.has("127.0.0.4", "9100") {
				t.Errorf("has() does not match exactly the listed host:port pairs")
			}
		})
	}
}

func TestTargetsFilesThatCannotBeServedAreRefusedWithTheReason(t *testing.T) {
	for name, tc := range map[string]struct{ content, want string }{
		"not a list":     {`{"targets":["a:1"]}`, "parsing"},
		"unknown field":  {`[{"targets":["a:1"],"label":{}}]`, "unknown field"},
		"no port":        {`[{"targets":["a"]}]`, "not host:port"},
		"bad host":       {`[{"targets":["-a:1"]}]`, "invalid FQDN"},
		"listed twice":   {`[{"targets":["a:1"]},{"targets":["A.:1"]}]`, "listed twice"},
		"too many":       {`[{"targets":["a:1","b:1","c:1"]}]`, "more than 2 targets"},
		"reserved label": {`[{"targets":["a:1"],"labels":{"__address__":"x"}}]`, "reserved"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseTargets("targets.json", []byte(tc.content), nil, 2)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseTargets = %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestABrokenTargetsFileKeepsThePreviousListAndIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "targets.json")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`[{"targets":["127.0.0.2:9100"]}]`)
	m := newMetrics(prometheus.NewRegistry())
	f, err := newTargetsFile(path, nil, 10, m)
	if err != nil {
		t.Fatal(err)
	}
	_, changed := f.current()
	write(`[{"targets":["127.0.0.3:9100"]`)
	if _, err := f.refresh(false); err == nil {
		t.Fatal("a broken file was taken")
	}
	if ok := testutil.ToFloat64(m.targetsReloadOK); ok != 0 {
		t.Errorf("last reload successful = %v after a broken file, want 0", ok)
	}
	if _, err := f.refresh(false); err != nil {
		t.Errorf("the same broken file was reported again on the next check: %v", err)
	}
	list, _ := f.current()
	if !list.has("127.0.0.2", "9100") {
		t.Errorf("the previous list was not kept")
	}
	select {
	case <-changed:
		t.Errorf("a broken file announced a change")
	default:
	}
	write(`[{"targets":["127.0.0.3:9100"]}]`)
	if updated, err := f.refresh(false); !updated || err != nil {
		t.Fatalf("refresh of a fixed file = %v, %v", updated, err)
	}
	<-changed
	list, _ = f.current()
	if list.has("127.0.0.2", "9100") || !list.has("127.0.0.3", "9100") {
		t.Errorf("the fixed file's list is not in force")
	}
	if ok, n := testutil.ToFloat64(m.targetsReloadOK), testutil.ToFloat64(m.targets); ok != 1 || n != 1 {
		t.Errorf("last reload successful = %v, targets = %v; want 1 and 1", ok, n)
	}
}

func TestTheTargetsFileMustSayItsFormat(t *testing.T) {
	var out strings.Builder
	_, err := parseFlags([]string{"--proxy-url=http://proxy:8080", "--fqdn=gw", "--targets.file=targets.txt"}, &out)
	if err == nil || !strings.Contains(err.Error(), ".json, .yml or .yaml") {
		t.Errorf("parseFlags = %v, want the file refused for its extension", err)
	}
}

func TestAClientWithoutATargetsFileReportsItsTargetsAsLoaded(t *testing.T) {
	c, err := newClient(testConfig(&url.URL{Scheme: "http", Host: "proxy.example"}, "node"), log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// The alert on a refused targets file must stay quiet on such clients.
	if got := testutil.ToFloat64(c.metrics.targetsReloadOK); got != 1 {
		t.Errorf("pushprox_client_targets_last_reload_successful = %v without a targets file, want 1", got)
	}
}
