package util

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
)

// Targets a client answers for besides its own FQDN (--targets.file). On
// polls, each target has polls of its own: the body is the target's host,
// as for any client, and HeaderTarget names the target. On a tunnel, the
// client announces its whole set on a control stream (docs/tunnel.md).
const (
	// HeaderTarget carries, on a poll, the target it is for: host:port
	// as the client's targets file lists it. The poll body is its host.
	HeaderTarget = "Pushprox-Target"
	// HeaderVia carries, on a poll for a target, the FQDN of the client
	// that polls for it.
	HeaderVia = "Pushprox-Via"
	// HeaderTargets, in a proxy's 101 answer, says that the proxy takes
	// a targets control stream of this version (TargetsVersion).
	HeaderTargets = "Pushprox-Targets"
	// TargetsVersion is the version of the control stream's messages.
	TargetsVersion = "1"
	// MaxTargetsMessage bounds one control stream message, so that a
	// peer cannot make the other hold more. It does not hold every
	// announcement a valid targets file could make: JSON writes a label
	// byte that the labels header encodes in 3 in 6 ("<" is %3C there and
	// \u003c here) and repeats a group's labels for each target, so 1024
	// targets with MaxLabelsBytes of labels each can take about 8 MiB.
	// 4 MiB holds 1024 targets with 3 KiB of plain labels each; a client
	// refuses a targets file whose announcement would not fit
	// (CheckAnnouncement), as it refuses one that does not parse.
	MaxTargetsMessage = 4 << 20
)

// ErrTargetsMessageTooLarge says that a control stream message would
// exceed MaxTargetsMessage.
var ErrTargetsMessageTooLarge = fmt.Errorf("targets message larger than %d bytes", MaxTargetsMessage)

// ParseTarget checks a target as a targets file lists it, host:port, and
// returns it without surrounding white space, with its host. The host must
// be valid as a client's FQDN is; the port a number from 1 to 65535.
func ParseTarget(raw string) (name, host string, err error) {
	name = strings.TrimSpace(raw)
	host, port, err := net.SplitHostPort(name)
	if err != nil {
		return "", "", fmt.Errorf("target %q is not host:port", name)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", "", fmt.Errorf("target %q: port %q is not a number from 1 to 65535", name, port)
	}
	if got, err := ParseFQDN(host); err != nil {
		return "", "", fmt.Errorf("target %q: %w", name, err)
	} else if got != host {
		return "", "", fmt.Errorf("target %q: host %q has white space around it", name, host)
	}
	return name, host, nil
}

// CheckLabels says why labels cannot be a client's or a target's labels,
// by the limits of the labels header.
func CheckLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d allowed", len(labels), MaxLabels)
	}
	for name, value := range labels {
		if err := checkNameValue(name, value); err != nil {
			return err
		}
	}
	if n := len(EncodeLabels(labels)); n > MaxLabelsBytes {
		return fmt.Errorf("labels take %d bytes encoded, at most %d allowed", n, MaxLabelsBytes)
	}
	return nil
}

// Announcement is a client's whole set of targets, as it sends it on its
// tunnel's control stream at first and after each change.
type Announcement struct {
	Targets []AnnouncedTarget `json:"targets"`
}

// AnnouncedTarget is one target of an Announcement: its name, host:port,
// and its labels for discovery, the client's own already merged in.
type AnnouncedTarget struct {
	Target string            `json:"target"`
	Labels map[string]string `json:"labels,omitempty"`
}

// AnnouncementAnswer is the proxy's answer to an Announcement: the targets
// it refused, with the reason. The others are served.
type AnnouncementAnswer struct {
	Refused []RefusedTarget `json:"refused,omitempty"`
}

// RefusedTarget is a target the proxy refused, and why.
type RefusedTarget struct {
	Target string `json:"target"`
	Reason string `json:"reason"`
}

// CheckAnnouncement says why a cannot be announced: its message would
// exceed MaxTargetsMessage (ErrTargetsMessageTooLarge).
func CheckAnnouncement(a Announcement) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if len(body) > MaxTargetsMessage {
		return fmt.Errorf("%w: its announcement takes %d bytes", ErrTargetsMessageTooLarge, len(body))
	}
	return nil
}

// WriteTargetsMessage writes v (an Announcement or AnnouncementAnswer) as
// one control stream message: its JSON length as 4 bytes, big-endian,
// then its JSON.
func WriteTargetsMessage(w io.Writer, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(body) > MaxTargetsMessage {
		return fmt.Errorf("%w: %d bytes", ErrTargetsMessageTooLarge, len(body))
	}
	msg := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(msg, uint32(len(body)))
	_, err = w.Write(append(msg, body...))
	return err
}

// ReadTargetsMessage reads one control stream message into v. It returns
// io.EOF when the stream ends before a message begins.
func ReadTargetsMessage(r io.Reader, v any) error {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("targets message cut in its length: %w", err)
		}
		return err
	}
	n := binary.BigEndian.Uint32(size[:])
	if n > MaxTargetsMessage {
		return fmt.Errorf("targets message of %d bytes, at most %d allowed", n, MaxTargetsMessage)
	}
	// The body grows with what arrives, not with what the length claims:
	// a peer that sends a length and stops holds no more than it sent.
	body, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err == nil && len(body) < int(n) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("targets message cut after its length: %w", err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("malformed targets message: %w", err)
	}
	return nil
}
