package util

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestTheTunnelHandshakeChoosesStreamReuseWhenTheClientOffersIt(t *testing.T) {
	for _, tc := range []struct {
		name      string
		offered   string
		wantReuse bool
	}{
		{"a client offering both versions gets streams reused", TunnelProtocolReuse + ", " + TunnelProtocol, true},
		{"a client of the first version gets a stream per scrape", TunnelProtocol, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, accept, err := NewTunnelRequest("http://proxy/tunnel", "vm", "", 4)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(headerWebSocketProtocol, tc.offered)
			if !IsTunnelRequest(req) {
				t.Fatal("not recognised as a tunnel request")
			}
			if got := TunnelReusesStreams(req); got != tc.wantReuse {
				t.Errorf("TunnelReusesStreams = %v, want %v", got, tc.wantReuse)
			}
			var answer bytes.Buffer
			if err := WriteTunnelAccept(&answer, req); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(&answer), req)
			if err != nil {
				t.Fatal(err)
			}
			accepted, reuse := TunnelAccepted(resp, accept)
			if !accepted || reuse != tc.wantReuse {
				t.Errorf("TunnelAccepted = %v, %v; want true, %v", accepted, reuse, tc.wantReuse)
			}
			if got := resp.Header.Values(headerWebSocketProtocol); len(got) != 1 || strings.Contains(got[0], ",") {
				t.Errorf("the proxy answered protocols %q, want exactly one", got)
			}
		})
	}
}

func TestAnAnswerReaderReadsAnswersOneAfterAnotherThenEOF(t *testing.T) {
	var stream bytes.Buffer
	first := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("first")), ContentLength: 5}
	second := &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{}, Body: io.NopCloser(io.MultiReader(strings.NewReader("sec"), strings.NewReader("ond"))), ContentLength: -1}
	if err := WriteAnswer(&stream, first, "a", true); err != nil {
		t.Fatal(err)
	}
	if err := WriteAnswer(&stream, second, "b", true); err != nil {
		t.Fatal(err)
	}

	answers := NewAnswerReader(&stream)
	for _, want := range []struct {
		id        string
		status    int
		body      string
		delimited bool
	}{{"a", 200, "first", true}, {"b", 404, "second", true}} {
		resp, err := answers.Next()
		if err != nil {
			t.Fatalf("answer %s: %v", want.id, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != want.body || resp.StatusCode != want.status || resp.Header.Get(HeaderID) != want.id {
			t.Errorf("answer %s: %d %q %v, want %d %q", want.id, resp.StatusCode, body, err, want.status, want.body)
		}
		if Delimited(resp) != want.delimited {
			t.Errorf("answer %s: Delimited = %v", want.id, Delimited(resp))
		}
	}
	if _, err := answers.Next(); err != io.EOF {
		t.Errorf("after the last answer: %v, want io.EOF", err)
	}
	if _, err := DecodeAnswer(strings.NewReader("")); err == nil || err == io.EOF {
		t.Errorf("DecodeAnswer of nothing: %v, want an error that is not io.EOF", err)
	}
}

func TestAnAnswerWithoutALengthOrChunksIsNotDelimited(t *testing.T) {
	raw := string(EncodeAnswerHead(http.StatusOK, "", AnswerHeader(http.Header{}, "a", 0, false, -1))) + "rest of the stream"
	resp, err := DecodeAnswer(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if Delimited(resp) {
		t.Error("an answer ending with its carrier counts as delimited")
	}
}
