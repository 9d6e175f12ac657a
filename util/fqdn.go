package util

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// MaxFQDNLength is the longest host name DNS allows.
const MaxFQDNLength = 253

// ParseFQDN returns the client name in a poll body, with surrounding white
// space removed, or an error saying why it is not a valid host name or IP
// address.
func ParseFQDN(raw string) (string, error) {
	fqdn := strings.TrimSpace(raw)
	if fqdn == "" {
		return "", errors.New("empty FQDN")
	}
	if len(fqdn) > MaxFQDNLength {
		return "", fmt.Errorf("FQDN is %d bytes long, more than %d", len(fqdn), MaxFQDNLength)
	}
	if _, err := netip.ParseAddr(fqdn); err == nil {
		return fqdn, nil
	}
	// A trailing dot is the DNS root; the name is the same without it.
	name := strings.TrimSuffix(fqdn, ".")
	for _, label := range strings.Split(name, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("invalid FQDN %q: %w", fqdn, err)
		}
	}
	return fqdn, nil
}

func checkLabel(label string) error {
	if label == "" {
		return errors.New("empty label")
	}
	if len(label) > 63 {
		return fmt.Errorf("label %q is longer than 63 bytes", label)
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with '-'", label)
	}
	for i, r := range label {
		// Underscores are not valid in host names but common in real
		// container and VM names, so they are accepted.
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			continue
		}
		// The character is quoted readably: a non-ASCII letter as
		// itself, a byte that is not UTF-8 as an escape.
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(label[i:]); size == 1 {
				return fmt.Errorf("label %q contains the byte %q, which is not UTF-8", label, label[i:i+1])
			}
		}
		return fmt.Errorf("label %q contains %q", label, r)
	}
	return nil
}
