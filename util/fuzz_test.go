package util

import (
	"strings"
	"testing"
)

// FuzzParseFQDN feeds arbitrary poll bodies to the FQDN check: it must not
// panic, and what it accepts must be fit to be a client's name.
func FuzzParseFQDN(f *testing.F) {
	for _, seed := range []string{
		"node1",
		"node1.example.com.",
		" node1.example\n",
		"10.0.0.1",
		"fe80::1%eth0",
		"-bad.example",
		"a..b",
		"node1/../etc",
		strings.Repeat("a.", 127),
		"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := ParseFQDN(raw)
		if err != nil {
			if got != "" {
				t.Fatalf("ParseFQDN(%q) = %q with error %v", raw, got, err)
			}
			return
		}
		if got == "" || len(got) > MaxFQDNLength {
			t.Fatalf("ParseFQDN(%q) accepted %q, %d bytes", raw, got, len(got))
		}
		if got != strings.TrimSpace(got) || got != strings.TrimSpace(raw) {
			t.Fatalf("ParseFQDN(%q) = %q, want the input without surrounding white space", raw, got)
		}
		// An accepted name is accepted as it is: the proxy and the client
		// check the same name.
		if again, err := ParseFQDN(got); err != nil || again != got {
			t.Fatalf("ParseFQDN(%q) = %q, %v; accepted before", got, again, err)
		}
	})
}
