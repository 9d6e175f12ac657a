package util

import (
	"strings"
	"testing"
)

func TestAnInvalidFQDNIsNamedReadably(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string
		want string
	}{
		{name: "non-ASCII letter", raw: "nöde.example", want: `label "nöde" contains 'ö'`},
		{name: "CJK", raw: "例え.example", want: `label "例え" contains '例'`},
		{name: "not UTF-8", raw: "n\xffde.example", want: `label "n\xffde" contains the byte "\xff", which is not UTF-8`},
		{name: "ASCII", raw: "node/1", want: `label "node/1" contains '/'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFQDN(tc.raw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseFQDN(%q) = %v, want %s", tc.raw, err, tc.want)
			}
		})
	}
}
