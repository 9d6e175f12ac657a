package util

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/rancher/pushprox/internal/mux"
)

// The tunnel handshake (docs/tunnel.md). A client asks for a tunnel with
// GET <proxy-url>/tunnel, shaped as a WebSocket handshake (RFC 6455) so
// that reverse proxies set up for WebSockets pass it, carrying what a poll
// carries: its FQDN, labels and credentials. A proxy that answers 101 with
// the matching Sec-WebSocket-Accept and protocol switches the connection to
// yamux, the proxy opening streams for scrapes; anything else means polls.
const (
	// TunnelPath is the proxy's endpoint for tunnels, next to PollPath.
	TunnelPath = "tunnel"
	// TunnelProtocol names the protocol spoken after the handshake in which
	// a stream carries one scrape and ends with its answer.
	TunnelProtocol = "pushprox-tunnel.v1"
	// TunnelProtocolReuse names the protocol in which a stream carries one
	// scrape after another, each answer's body delimited by its length or
	// chunked, so that a scrape costs no stream opening and closing.
	TunnelProtocolReuse = "pushprox-tunnel.v2"
	// HeaderFQDN carries the client's FQDN in a tunnel request.
	HeaderFQDN = "Pushprox-Fqdn"
	// HeaderMaxConcurrency carries how many scrapes at once a client takes
	// on its tunnel.
	HeaderMaxConcurrency = "Pushprox-Max-Concurrency"

	headerWebSocketKey      = "Sec-WebSocket-Key"
	headerWebSocketVersion  = "Sec-WebSocket-Version"
	headerWebSocketProtocol = "Sec-WebSocket-Protocol"
	headerWebSocketAccept   = "Sec-WebSocket-Accept"
	// webSocketGUID is RFC 6455's constant for the accept value.
	webSocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

	// TunnelStreamWindow bounds what is buffered per stream (yamux's
	// window): a scrape in flight holds at most this much in memory on
	// either side, whatever its size.
	TunnelStreamWindow = 256 << 10
)

// NewTunnelRequest returns the handshake request of a client for the
// tunnel endpoint at tunnelURL, and the accept value a proxy must answer.
func NewTunnelRequest(tunnelURL, fqdn, labels string, maxConcurrency int) (*http.Request, string, error) {
	req, err := http.NewRequest(http.MethodGet, tunnelURL, nil)
	if err != nil {
		return nil, "", err
	}
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	key := base64.StdEncoding.EncodeToString(nonce)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set(headerWebSocketVersion, "13")
	req.Header.Set(headerWebSocketKey, key)
	// Preferred first, as RFC 6455 lists subprotocols.
	req.Header.Set(headerWebSocketProtocol, TunnelProtocolReuse+", "+TunnelProtocol)
	req.Header.Set(HeaderFQDN, fqdn)
	req.Header.Set(HeaderMaxConcurrency, strconv.Itoa(maxConcurrency))
	if labels != "" {
		req.Header.Set(HeaderLabels, labels)
	}
	return req, webSocketAccept(key), nil
}

// IsTunnelRequest says whether r asks for a tunnel of one of these
// protocols.
func IsTunnelRequest(r *http.Request) bool {
	return headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket") &&
		tunnelProtocolOf(r.Header) != "" &&
		r.Header.Get(headerWebSocketKey) != ""
}

// TunnelReusesStreams says whether the tunnel asked for with r speaks
// TunnelProtocolReuse: whether the client offered it.
func TunnelReusesStreams(r *http.Request) bool {
	return tunnelProtocolOf(r.Header) == TunnelProtocolReuse
}

// tunnelProtocolOf is the protocol chosen from those offered or answered
// in h: the one reusing streams when there, else the first version, else
// none.
func tunnelProtocolOf(h http.Header) string {
	switch {
	case headerHasToken(h, headerWebSocketProtocol, TunnelProtocolReuse):
		return TunnelProtocolReuse
	case headerHasToken(h, headerWebSocketProtocol, TunnelProtocol):
		return TunnelProtocol
	}
	return ""
}

// TunnelAccepted says whether resp accepts a tunnel asked for with the
// given accept value, and if so whether its streams carry one scrape after
// another (TunnelProtocolReuse).
func TunnelAccepted(resp *http.Response, accept string) (accepted, reuse bool) {
	protocol := resp.Header.Get(headerWebSocketProtocol)
	accepted = resp.StatusCode == http.StatusSwitchingProtocols &&
		resp.Header.Get(headerWebSocketAccept) == accept &&
		(protocol == TunnelProtocol || protocol == TunnelProtocolReuse)
	return accepted, accepted && protocol == TunnelProtocolReuse
}

// WriteTunnelAccept writes the proxy's 101 answer to tunnel request r,
// choosing the protocol that reuses streams when r offers it.
func WriteTunnelAccept(w io.Writer, r *http.Request) error {
	_, err := io.WriteString(w, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\n"+
		headerWebSocketAccept+": "+webSocketAccept(r.Header.Get(headerWebSocketKey))+"\r\n"+
		headerWebSocketProtocol+": "+tunnelProtocolOf(r.Header)+"\r\n"+
		HeaderTargets+": "+TargetsVersion+"\r\n\r\n")
	return err
}

func webSocketAccept(key string) string {
	sum := sha1.Sum([]byte(key + webSocketGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, value := range h.Values(name) {
		for _, t := range strings.Split(value, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// TunnelConfig is the multiplexer's configuration of both ends of a
// tunnel: pings every pingInterval, so that idle cuts of load balancers do
// not hit it, answered within at most 10 s, so that a dead peer is noticed
// within about two intervals; bounded windows.
func TunnelConfig(pingInterval time.Duration) mux.Config {
	return mux.Config{
		Window:       TunnelStreamWindow,
		PingInterval: pingInterval,
		PingTimeout:  min(pingInterval, 10*time.Second),
		CloseTimeout: 30 * time.Second,
	}
}
