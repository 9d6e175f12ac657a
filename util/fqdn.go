package util

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
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
	for i := 0; i < len(label); i++ {
		c := label[i]
		// Underscores are not valid in host names but common in real
		// container and VM names, so they are accepted.
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return fmt.Errorf("label %q contains %q", label, c)
		}
	}
	return nil
}
