package util

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

func TestParseTargetTakesHostAndPortAndRefusesTheRest(t *testing.T) {
	for _, tc := range []struct {
		raw, name, host string
		ok              bool
	}{
		{" 127.0.0.2:9100\n", "127.0.0.2:9100", "127.0.0.2", true},
		{"Printer.example.:161", "Printer.example.:161", "Printer.example.", true},
		{"[::1]:9100", "[::1]:9100", "::1", true},
		{"node1", "", "", false},
		{"node1:0", "", "", false},
		{"node1:65536", "", "", false},
		{"node1:http", "", "", false},
		{"-bad:9100", "", "", false},
		{"a b:9100", "", "", false},
		{":9100", "", "", false},
	} {
		name, host, err := ParseTarget(tc.raw)
		if (err == nil) != tc.ok || name != tc.name || host != tc.host {
			t.Errorf("ParseTarget(%q) = %q, %q, %v; want %q, %q, ok %v", tc.raw, name, host, err, tc.name, tc.host, tc.ok)
		}
	}
}

func TestCheckLabelsAppliesTheLimitsOfTheLabelsHeader(t *testing.T) {
	if err := CheckLabels(map[string]string{"site": "a", "rack": "r1"}); err != nil {
		t.Errorf("valid labels refused: %v", err)
	}
	for _, bad := range []map[string]string{
		{"__address__": "x"},
		{"bad-name": "x"},
		{"big": strings.Repeat("x", MaxLabelValueBytes+1)},
	} {
		if err := CheckLabels(bad); err == nil {
			t.Errorf("CheckLabels(%v) accepted", bad)
		}
	}
	many := map[string]string{}
	for i := 0; i <= MaxLabels; i++ {
		many[strings.Repeat("l", i+1)] = "x"
	}
	if err := CheckLabels(many); err == nil {
		t.Errorf("%d labels accepted", len(many))
	}
}

func TestTargetsMessagesRoundTrip(t *testing.T) {
	var stream bytes.Buffer
	announced := Announcement{Targets: []AnnouncedTarget{
		{Target: "127.0.0.2:9100", Labels: map[string]string{"site": "a"}},
		{Target: "127.0.0.3:9100"},
	}}
	answer := AnnouncementAnswer{Refused: []RefusedTarget{{Target: "x:1", Reason: "no"}}}
	if err := WriteTargetsMessage(&stream, announced); err != nil {
		t.Fatal(err)
	}
	if err := WriteTargetsMessage(&stream, answer); err != nil {
		t.Fatal(err)
	}
	var gotAnnounced Announcement
	var gotAnswer AnnouncementAnswer
	if err := ReadTargetsMessage(&stream, &gotAnnounced); err != nil || !reflect.DeepEqual(gotAnnounced, announced) {
		t.Errorf("read %+v, %v; want %+v", gotAnnounced, err, announced)
	}
	if err := ReadTargetsMessage(&stream, &gotAnswer); err != nil || !reflect.DeepEqual(gotAnswer, answer) {
		t.Errorf("read %+v, %v; want %+v", gotAnswer, err, answer)
	}
	if err := ReadTargetsMessage(&stream, &gotAnswer); !errors.Is(err, io.EOF) {
		t.Errorf("read at the end of the stream: %v, want io.EOF", err)
	}
}

func TestTargetsMessagesRefuseOversizedCutAndMalformedInput(t *testing.T) {
	var huge [4]byte
	binary.BigEndian.PutUint32(huge[:], MaxTargetsMessage+1)
	for name, input := range map[string][]byte{
		"oversized":  huge[:],
		"cut length": {0, 0},
		"cut body":   {0, 0, 0, 10, '{'},
		"not JSON":   {0, 0, 0, 2, 'n', 'o'},
	} {
		var v Announcement
		err := ReadTargetsMessage(bytes.NewReader(input), &v)
		if err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: read gave %v, want an error other than io.EOF", name, err)
		}
	}
	big := Announcement{Targets: []AnnouncedTarget{{Target: strings.Repeat("x", MaxTargetsMessage)}}}
	if err := WriteTargetsMessage(io.Discard, big); err == nil {
		t.Errorf("an oversized message was written")
	}
}

// FuzzReadTargetsMessage feeds arbitrary control streams to the reader: it
// must not panic, and what it reads must write back and read again the same.
func FuzzReadTargetsMessage(f *testing.F) {
	var seed bytes.Buffer
	_ = WriteTargetsMessage(&seed, Announcement{Targets: []AnnouncedTarget{{Target: "a:1", Labels: map[string]string{"x": "y"}}}})
	f.Add(seed.Bytes())
	f.Add([]byte{0, 0, 0, 2, '{', '}'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, input []byte) {
		var first Announcement
		if err := ReadTargetsMessage(bytes.NewReader(input), &first); err != nil {
			return
		}
		var again bytes.Buffer
		if err := WriteTargetsMessage(&again, first); err != nil {
			t.Fatalf("writing back %+v: %v", first, err)
		}
		// Compared as written: an empty label map and none write alike.
		written := append([]byte(nil), again.Bytes()...)
		var second Announcement
		if err := ReadTargetsMessage(&again, &second); err != nil {
			t.Fatalf("reading back %+v: %v", first, err)
		}
		var rewritten bytes.Buffer
		_ = WriteTargetsMessage(&rewritten, second)
		if !bytes.Equal(written, rewritten.Bytes()) {
			t.Fatalf("read back %+v, want %+v", second, first)
		}
	})
}

// A peer that sends only a length must not make ReadTargetsMessage
// allocate the whole length before a byte of the message has come: that
// would be 4 MiB per control stream for 4 bytes sent, on a proxy without
// authentication.
func TestReadingATargetsMessageAllocatesNoMoreThanWhatArrived(t *testing.T) {
	var header [4]byte
	binary.BigEndian.PutUint32(header[:], MaxTargetsMessage)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var v Announcement
	_ = ReadTargetsMessage(bytes.NewReader(header[:]), &v)
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
		t.Errorf("reading a 4-byte message allocated %d bytes", got)
	}
}

// A client's targets file may list --targets.max (1024) targets whose
// labels each pass CheckLabels (4096 bytes as the labels header encodes
// them), and their announcement may still not fit in one control stream
// message: JSON escapes "<" into 6 bytes and repeats the labels for each
// target. CheckAnnouncement says so, for the client to refuse the file,
// and WriteTargetsMessage writes nothing of it.
func TestAnAnnouncementTooLargeForOneMessageIsRefusedBeforeAByteIsWritten(t *testing.T) {
	labels := map[string]string{}
	for i := range MaxLabels {
		labels[fmt.Sprintf("l%02d", i)] = strings.Repeat("<", 40)
	}
	if err := CheckLabels(labels); err != nil {
		t.Fatal(err)
	}
	var a Announcement
	for i := range 1024 {
		a.Targets = append(a.Targets, AnnouncedTarget{Target: fmt.Sprintf("host-%d.example:9100", i), Labels: labels})
	}
	if err := CheckAnnouncement(a); !errors.Is(err, ErrTargetsMessageTooLarge) {
		t.Errorf("CheckAnnouncement = %v, want ErrTargetsMessageTooLarge", err)
	}
	var written bytes.Buffer
	if err := WriteTargetsMessage(&written, a); !errors.Is(err, ErrTargetsMessageTooLarge) || written.Len() > 0 {
		t.Errorf("WriteTargetsMessage = %v after writing %d bytes, want ErrTargetsMessageTooLarge and nothing written", err, written.Len())
	}
	a.Targets = a.Targets[:1]
	if err := CheckAnnouncement(a); err != nil {
		t.Errorf("one such target: %v", err)
	}
}
