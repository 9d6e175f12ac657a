package util

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strings"
)

// HeaderLabels carries a client's discovery labels on each poll, encoded as
// a URL query: name=value&name=value.
const HeaderLabels = "Pushprox-Labels"

// Limits on a client's labels, so that a poll stays small.
const (
	MaxLabels          = 32
	MaxLabelValueBytes = 1024
	MaxLabelsBytes     = 4096 // the labels header, encoded
)

var labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// CheckLabelName says why name cannot be a client label: not a Prometheus
// label name, or reserved (a leading "__" belongs to Prometheus).
func CheckLabelName(name string) error {
	if !labelNameRE.MatchString(name) {
		return fmt.Errorf("invalid label name %q", name)
	}
	if strings.HasPrefix(name, "__") {
		return fmt.Errorf("label name %q is reserved: names starting with __ are Prometheus' own", name)
	}
	return nil
}

// ParseLabel parses a name=value pair, as the client's --label flag takes it.
func ParseLabel(pair string) (name, value string, err error) {
	name, value, ok := strings.Cut(pair, "=")
	if !ok {
		return "", "", fmt.Errorf("label %q is not name=value", pair)
	}
	if err := checkNameValue(name, value); err != nil {
		return "", "", err
	}
	return name, value, nil
}

func checkNameValue(name, value string) error {
	if err := CheckLabelName(name); err != nil {
		return err
	}
	if len(value) > MaxLabelValueBytes {
		return fmt.Errorf("value of label %q is longer than %d bytes", name, MaxLabelValueBytes)
	}
	return nil
}

// EncodeLabels renders labels for the labels header, in a stable order.
func EncodeLabels(labels map[string]string) string {
	values := url.Values{}
	for name, value := range labels {
		values.Set(name, value)
	}
	return values.Encode()
}

// DecodeLabels parses the labels header. An empty header means no labels.
func DecodeLabels(header string) (map[string]string, error) {
	if header == "" {
		return nil, nil
	}
	if len(header) > MaxLabelsBytes {
		return nil, fmt.Errorf("labels take %d bytes encoded, at most %d allowed", len(header), MaxLabelsBytes)
	}
	values, err := url.ParseQuery(header)
	if err != nil {
		return nil, fmt.Errorf("malformed labels: %w", err)
	}
	if len(values) > MaxLabels {
		return nil, fmt.Errorf("%d labels, at most %d allowed", len(values), MaxLabels)
	}
	labels := make(map[string]string, len(values))
	for name, vals := range values {
		if len(vals) != 1 {
			return nil, fmt.Errorf("label %q given %d times", name, len(vals))
		}
		if err := checkNameValue(name, vals[0]); err != nil {
			return nil, err
		}
		labels[name] = vals[0]
	}
	return labels, nil
}

// LabelsKey renders labels as a string that is equal for equal label sets.
func LabelsKey(labels map[string]string) string {
	names := make([]string, 0, len(labels))
	for name := range labels {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		fmt.Fprintf(&b, "%s=%q,", name, labels[name])
	}
	return b.String()
}
