package util

import (
	"math"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// timeoutHeader returns a header carrying value as the scrape timeout; nil
// for "" so that "absent" is a case of its own.
func timeoutHeader(value string) http.Header {
	if value == "" {
		return http.Header{}
	}
	return http.Header{HeaderScrapeTimeoutSeconds: {value}}
}

func TestScrapeTimeout(t *testing.T) {
	const def, max = 15 * time.Second, 20 * time.Second
	for _, tc := range []struct {
		name   string
		header string // "" sends none
		def    time.Duration
		want   time.Duration
	}{
		{name: "from header", header: "3.5", def: def, want: 3500 * time.Millisecond},
		{name: "fraction of a second", header: "0.25", def: def, want: 250 * time.Millisecond},
		{name: "white space around", header: " 2 ", def: def, want: 2 * time.Second},
		{name: "absent", def: def, want: def},
		{name: "clamped", header: "600", def: def, want: max},
		{name: "huge is clamped", header: "1e300", def: def, want: max},
		{name: "default clamped too", def: time.Minute, want: max},
		{name: "not a number", header: "soon", def: def, want: def},
		{name: "with unit", header: "10s", def: def, want: def},
		{name: "zero", header: "0", def: def, want: def},
		{name: "negative", header: "-5", def: def, want: def},
		{name: "NaN", header: "NaN", def: def, want: def},
		{name: "Inf", header: "Inf", def: def, want: def},
		{name: "-Inf", header: "-Inf", def: def, want: def},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ScrapeTimeout(timeoutHeader(tc.header), tc.def, max); got != tc.want {
				t.Errorf("ScrapeTimeout(%q) = %s, want %s", tc.header, got, tc.want)
			}
		})
	}
}

func TestHeaderTimeout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		header  string // "" sends none
		want    time.Duration
		wantErr string
	}{
		{name: "seconds", header: "10", want: 10 * time.Second},
		{name: "fraction", header: "0.5", want: 500 * time.Millisecond},
		{name: "exponent", header: "1e1", want: 10 * time.Second},
		{name: "beyond a Duration", header: "1e300", want: time.Duration(math.MaxInt64)},
		{name: "absent", wantErr: "missing X-Prometheus-Scrape-Timeout-Seconds header"},
		{name: "blank", header: "  ", wantErr: "missing X-Prometheus-Scrape-Timeout-Seconds header"},
		{name: "not a number", header: "abc", wantErr: `invalid X-Prometheus-Scrape-Timeout-Seconds header "abc"`},
		{name: "zero", header: "0", wantErr: "invalid"},
		{name: "negative", header: "-1", wantErr: "invalid"},
		{name: "NaN", header: "NaN", wantErr: "invalid"},
		{name: "+Inf", header: "+Inf", wantErr: "invalid"},
		{name: "below a nanosecond", header: "1e-300", wantErr: "shorter than a nanosecond"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := HeaderTimeout(timeoutHeader(tc.header), HeaderScrapeTimeoutSeconds)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("HeaderTimeout(%q) = %s, %v; want error %q", tc.header, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("HeaderTimeout(%q) = %s, %v; want %s", tc.header, got, err, tc.want)
			}
		})
	}
}

func TestFormatSecondsRoundTrips(t *testing.T) {
	for _, d := range []time.Duration{10 * time.Second, 1500 * time.Millisecond, time.Millisecond, 5 * time.Minute} {
		h := http.Header{HeaderScrapeTimeoutSeconds: {FormatSeconds(d)}}
		if got, err := HeaderTimeout(h, HeaderScrapeTimeoutSeconds); err != nil || got != d {
			t.Errorf("FormatSeconds(%s) = %q, which reads back as %s, %v", d, FormatSeconds(d), got, err)
		}
	}
}

func TestParsePreferWait(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string // Prefer header values; nil sends none
		want   time.Duration
		wantOK bool
	}{
		{name: "wait", values: []string{"wait=30"}, want: 30 * time.Second, wantOK: true},
		{name: "among other preferences", values: []string{"respond-async, wait=10"}, want: 10 * time.Second, wantOK: true},
		{name: "case and spaces", values: []string{"WAIT = 5"}, want: 5 * time.Second, wantOK: true},
		{name: "quoted", values: []string{`wait="7"`}, want: 7 * time.Second, wantOK: true},
		{name: "with a parameter", values: []string{"wait=3;foo=bar"}, want: 3 * time.Second, wantOK: true},
		{name: "in a second header", values: []string{"respond-async", "wait=4"}, want: 4 * time.Second, wantOK: true},
		{name: "zero", values: []string{"wait=0"}, want: 0, wantOK: true},
		{name: "not a number", values: []string{"wait=abc"}},
		{name: "negative", values: []string{"wait=-1"}},
		{name: "fraction", values: []string{"wait=1.5"}},
		{name: "no value", values: []string{"wait"}},
		{name: "other preference", values: []string{"handling=lenient"}},
		{name: "absent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.values {
				h.Add(HeaderPrefer, v)
			}
			got, ok := ParsePreferWait(h)
			if got != tc.want || ok != tc.wantOK {
				t.Errorf("ParsePreferWait(%q) = %s, %v; want %s, %v", tc.values, got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

func TestResolveProxyPath(t *testing.T) {
	for _, tc := range []struct {
		base string
		path string
		want string
	}{
		{base: "http://p:8080", path: PollPath, want: "http://p:8080/poll"},
		{base: "http://p:8080/", path: PollPath, want: "http://p:8080/poll"},
		{base: "http://p/prefix", path: PollPath, want: "http://p/prefix/poll"},
		{base: "http://p/prefix/", path: PollPath, want: "http://p/prefix/poll"},
		{base: "https://p/a/b/", path: PushPath, want: "https://p/a/b/push"},
		{base: "http://p:8080/?token=x#frag", path: PushPath, want: "http://p:8080/push?token=x"},
	} {
		t.Run(tc.base+" "+tc.path, func(t *testing.T) {
			base, err := ParseProxyURL(tc.base)
			if err != nil {
				t.Fatal(err)
			}
			got := ResolveProxyPath(base, tc.path)
			if got.String() != tc.want {
				t.Errorf("ResolveProxyPath(%s, %s) = %s, want %s", tc.base, tc.path, got, tc.want)
			}
			if base.String() != mustParse(t, tc.base).String() {
				t.Errorf("base URL changed to %s", base)
			}
		})
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestParseProxyURL(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		wantErr string // "" for a valid URL
	}{
		{raw: "http://proxy:8080"},
		{raw: "https://user:secret@proxy.example/pushprox/"},
		{raw: "ftp://proxy", wantErr: "scheme must be http or https"},
		{raw: "proxy:8080", wantErr: "scheme must be http or https"},
		{raw: "", wantErr: "scheme must be http or https"},
		{raw: "http://", wantErr: "no host"},
		{raw: "http:///poll", wantErr: "no host"},
		{raw: "http://proxy:port", wantErr: "invalid proxy URL"},
		{raw: "://proxy", wantErr: "invalid proxy URL"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			u, err := ParseProxyURL(tc.raw)
			if tc.wantErr == "" {
				if err != nil || u == nil {
					t.Errorf("ParseProxyURL(%q) = %v, %v", tc.raw, u, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseProxyURL(%q) = %v, %v; want error %q", tc.raw, u, err, tc.wantErr)
			}
		})
	}
}

func TestParseFQDN(t *testing.T) {
	// 25 labels of 9 bytes and their dots, then 3 bytes: 253 bytes.
	longest := strings.Repeat("abcdefghi.", 25) + "abc"
	label63 := strings.Repeat("a", 63)
	for _, tc := range []struct {
		name    string
		raw     string
		want    string
		wantErr string // "" for a valid name
	}{
		{name: "short name", raw: "node1", want: "node1"},
		{name: "qualified", raw: "node1.example.com", want: "node1.example.com"},
		{name: "mixed case", raw: "Node1.Example.COM", want: "Node1.Example.COM"},
		{name: "hyphen and underscore inside", raw: "my-node_1.example", want: "my-node_1.example"},
		{name: "digits only label", raw: "123.example", want: "123.example"},
		{name: "IPv4", raw: "10.0.0.1", want: "10.0.0.1"},
		{name: "IPv6", raw: "2001:db8::1", want: "2001:db8::1"},
		{name: "IPv6 loopback", raw: "::1", want: "::1"},
		{name: "trailing dot", raw: "node1.example.", want: "node1.example."},
		{name: "white space trimmed", raw: " \tnode1.example\r\n", want: "node1.example"},
		{name: "253 bytes", raw: longest, want: longest},
		{name: "63-byte label", raw: label63 + ".example", want: label63 + ".example"},
		{name: "empty", raw: "", wantErr: "empty FQDN"},
		{name: "only white space", raw: " \n\t", wantErr: "empty FQDN"},
		{name: "254 bytes", raw: longest + "d", wantErr: "more than 253"},
		{name: "64-byte label", raw: label63 + "a.example", wantErr: "longer than 63 bytes"},
		{name: "leading hyphen", raw: "-node.example", wantErr: "starts or ends with '-'"},
		{name: "trailing hyphen", raw: "node-.example", wantErr: "starts or ends with '-'"},
		{name: "empty label", raw: "node..example", wantErr: "empty label"},
		{name: "leading dot", raw: ".example", wantErr: "empty label"},
		{name: "only a dot", raw: ".", wantErr: "empty label"},
		{name: "slash", raw: "node1/../etc", wantErr: "contains '/'"},
		{name: "port", raw: "node1:9100", wantErr: "contains ':'"},
		{name: "inner space", raw: "node 1", wantErr: "contains ' '"},
		{name: "non-ASCII", raw: "nöde.example", wantErr: "invalid FQDN"},
		{name: "bracketed IPv6", raw: "[::1]", wantErr: "invalid FQDN"},
		{name: "NUL", raw: "node\x00.example", wantErr: "invalid FQDN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFQDN(tc.raw)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Errorf("ParseFQDN(%q) = %q, %v; want %q", tc.raw, got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseFQDN(%q) = %q, %v; want error %q", tc.raw, got, err, tc.wantErr)
			}
		})
	}
}

func TestRemoveHopByHopHeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{
			name: "fixed hop-by-hop headers",
			in: http.Header{
				"Connection":          {"keep-alive"},
				"Proxy-Connection":    {"keep-alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Authenticate":  {"Basic"},
				"Proxy-Authorization": {"Basic cHJveHk6c2VjcmV0"},
				"Te":                  {"trailers"},
				"Trailer":             {"Expires"},
				"Transfer-Encoding":   {"chunked"},
				"Upgrade":             {"h2c"},
				"Authorization":       {"Bearer for-the-target"},
				"Accept-Encoding":     {"gzip"},
				"Content-Encoding":    {"gzip"},
			},
			want: http.Header{
				"Authorization":    {"Bearer for-the-target"},
				"Accept-Encoding":  {"gzip"},
				"Content-Encoding": {"gzip"},
			},
		},
		{
			name: "names listed in Connection",
			in: http.Header{
				"Connection":  {"X-Hop, x-other-hop", " X-Third ,"},
				"X-Hop":       {"1"},
				"X-Other-Hop": {"2"},
				"X-Third":     {"3"},
				"X-End":       {"kept"},
			},
			want: http.Header{"X-End": {"kept"}},
		},
		{
			name: "nothing to remove",
			in:   http.Header{"Accept": {"text/plain"}, "Authorization": {"Basic dTpw"}},
			want: http.Header{"Accept": {"text/plain"}, "Authorization": {"Basic dTpw"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			RemoveHopByHopHeaders(h)
			if len(h) != len(tc.want) {
				t.Errorf("got %v, want %v", h, tc.want)
			}
			for name, values := range tc.want {
				if got := h.Values(name); strings.Join(got, "|") != strings.Join(values, "|") {
					t.Errorf("%s = %q, want %q", name, got, values)
				}
			}
		})
	}
}

func TestRemoveInternalHeaders(t *testing.T) {
	h := http.Header{
		HeaderID:                   {"4b0c4e5e-0000-0000-0000-000000000000"},
		HeaderScrapeTimeout:        {"1.5"},
		HeaderScrapeTimeoutSeconds: {"10"},
		"Content-Type":             {"text/plain"},
	}
	RemoveInternalHeaders(h)
	if len(h) != 1 || h.Get("Content-Type") != "text/plain" {
		t.Errorf("got %v, want Content-Type only", h)
	}
}
