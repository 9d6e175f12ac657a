package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rancher/pushprox/util"
)

// brokenBody fails on its first read, as the body of a target whose
// connection broke right after its head.
type brokenBody struct{}

func (brokenBody) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }
func (brokenBody) Close() error             { return nil }

func TestATargetThatBreaksBeforeItsFirstByteIsOneScrapeErrorAnsweredWithTheReasonAndNoPushError(t *testing.T) {
	clientEnd, proxyEnd := tunnelPair(t)
	c, err := newClient(testConfig(&url.URL{Scheme: "http", Host: "proxy.example"}, "node"), log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	toClient, err := proxyEnd.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer toClient.Close()
	stream, err := clientEnd.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://node:9100/metrics", nil)
	resp := &http.Response{StatusCode: http.StatusOK, ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, ContentLength: 1000, Body: brokenBody{}, Request: req}
	c.sendAnswer(req, resp, time.Now(), c.streamAnswer(stream, "scrape-1", true))

	_ = toClient.SetReadDeadline(time.Now().Add(waitLimit))
	answer, err := util.NewAnswerReader(toClient).Next()
	if err != nil {
		t.Fatalf("no answer on the stream: %v", err)
	}
	body, err := io.ReadAll(answer.Body)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if answer.StatusCode != http.StatusInternalServerError || answer.Header.Get(util.HeaderID) != "scrape-1" || !strings.Contains(string(body), "unexpected EOF") {
		t.Errorf("answer %d, Id %q, body %q: want 500 for scrape-1 with the reason", answer.StatusCode, answer.Header.Get(util.HeaderID), body)
	}
	if got := testutil.ToFloat64(c.metrics.scrapeErrors); got != 1 {
		t.Errorf("scrape errors: %v, want 1", got)
	}
	if got := testutil.ToFloat64(c.metrics.pushErrors); got != 0 {
		t.Errorf("push errors: %v, want 0: the reason was answered", got)
	}
}
