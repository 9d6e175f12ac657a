package util

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The wire format of a scrape, in one place. A scrape request travels from
// the proxy to a client in HTTP/1.1 proxy form (absolute-form request line,
// Prometheus' end-to-end headers, Id and the effective timeout); the
// client's answer travels back as an HTTP/1.1 response whose headers carry
// the same Id and the seconds left of the timeout. Long polls carry them as
// the bodies of a /poll answer and a /push; a tunnel carries them as the
// two directions of one stream.

const (
	// MaxScrapeRequest bounds an encoded scrape request: a poll answer
	// holds exactly one.
	MaxScrapeRequest = 1 << 20
	// MaxScrapeRequestBody bounds the body of a proxied request; scrapes
	// are GETs and carry none.
	MaxScrapeRequestBody = MaxScrapeRequest / 2
	// MaxAnswerHead bounds the status line and headers of an answer.
	MaxAnswerHead = 1 << 20
)

// EncodeScrapeRequest serializes the request a client will make for r:
// Prometheus' request in proxy form without hop-by-hop and internal
// headers, tagged with the scrape's id and effective timeout. The body of
// r, if any, is read whole; it may be at most MaxScrapeRequestBody bytes
// (an *http.MaxBytesError says so).
func EncodeScrapeRequest(r *http.Request, id string, timeout time.Duration) ([]byte, error) {
	out := r.Clone(r.Context())
	RemoveHopByHopHeaders(out.Header)
	RemoveInternalHeaders(out.Header)
	out.Header.Set(HeaderID, id)
	out.Header.Set(HeaderScrapeTimeoutSeconds, FormatSeconds(timeout))
	out.TransferEncoding = nil
	out.Close = false
	out.Body = nil
	out.ContentLength = 0
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxScrapeRequestBody+1))
		if err != nil {
			return nil, err
		}
		if len(body) > MaxScrapeRequestBody {
			return nil, &http.MaxBytesError{Limit: MaxScrapeRequestBody}
		}
		if len(body) > 0 {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
		}
	}
	var buf bytes.Buffer
	if err := out.WriteProxy(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// EncodeConnectRequest serializes a CONNECT to target (host:port) for
// a tunnel stream: the client dials target within dialTimeout and answers
// 200 before the stream carries the connection's bytes both ways.
func EncodeConnectRequest(target, id string, dialTimeout time.Duration) []byte {
	return []byte("CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n" +
		HeaderID + ": " + id + "\r\n" +
		HeaderScrapeTimeoutSeconds + ": " + FormatSeconds(dialTimeout) + "\r\n\r\n")
}

// DecodeStreamRequest reads what a tunnel stream asks for: a scrape request
// as DecodeScrapeRequest reads it, or a CONNECT as EncodeConnectRequest
// writes it (Method CONNECT, the target in Host).
func DecodeStreamRequest(r *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(r)
	if err != nil {
		return nil, fmt.Errorf("not a scrape request: %w", err)
	}
	if req.Method == http.MethodConnect {
		if req.Header.Get(HeaderID) == "" || req.Host == "" {
			return nil, fmt.Errorf("not a CONNECT request: no %s or no target", HeaderID)
		}
		return req, nil
	}
	return checkScrapeRequest(req)
}

// DecodeScrapeRequest reads one scrape request from r, as encoded by
// EncodeScrapeRequest: an absolute URL (a CONNECT request has a host but no
// scheme and is refused) and an Id. Its body, if any, is read into memory.
func DecodeScrapeRequest(r *bufio.Reader) (*http.Request, error) {
	req, err := http.ReadRequest(r)
	if err != nil {
		return nil, fmt.Errorf("not a scrape request: %w", err)
	}
	return checkScrapeRequest(req)
}

func checkScrapeRequest(req *http.Request) (*http.Request, error) {
	if !req.URL.IsAbs() || req.URL.Host == "" {
		return nil, fmt.Errorf("not a scrape request: %q is not an absolute URL", req.RequestURI)
	}
	if req.Header.Get(HeaderID) == "" {
		return nil, fmt.Errorf("not a scrape request: no %s header", HeaderID)
	}
	rest, err := io.ReadAll(io.LimitReader(req.Body, MaxScrapeRequestBody+1))
	if err != nil {
		return nil, fmt.Errorf("scrape request has a broken body: %w", err)
	}
	if len(rest) > MaxScrapeRequestBody {
		return nil, fmt.Errorf("scrape request body larger than %d bytes", MaxScrapeRequestBody)
	}
	req.Body = io.NopCloser(bytes.NewReader(rest))
	return req, nil
}

// AnswerHeader returns the header an answer to scrape id carries back: the
// target's header without hop-by-hop headers, with the Id, the seconds left
// of the timeout when there is a deadline, and the body's length when it is
// known (length >= 0). Without a length, the answer's body ends where its
// carrier's body ends.
func AnswerHeader(target http.Header, id string, left time.Duration, hasDeadline bool, length int64) http.Header {
	header := target.Clone()
	if header == nil {
		header = http.Header{}
	}
	RemoveHopByHopHeaders(header)
	header.Set(HeaderID, id)
	if hasDeadline {
		header.Set(HeaderScrapeTimeout, FormatSeconds(max(left, 0)))
	}
	header.Del("Content-Length")
	if length >= 0 {
		header.Set("Content-Length", strconv.FormatInt(length, 10))
	}
	return header
}

// EncodeAnswerHead serializes the status line of an answer with the given
// status (as in http.Response.Status, or empty) and header as HTTP/1.1. The
// body follows it as it is.
func EncodeAnswerHead(code int, status string, header http.Header) []byte {
	text := strings.TrimPrefix(status, strconv.Itoa(code)+" ")
	if text == "" {
		text = http.StatusText(code)
	}
	var head bytes.Buffer
	fmt.Fprintf(&head, "HTTP/1.1 %03d %s\r\n", code, text)
	_ = header.Write(&head)
	head.WriteString("\r\n")
	return head.Bytes()
}

// AnswerHead encodes the head of resp as the answer to scrape id: its
// status and headers, tagged with the Id and the seconds left until the
// deadline of resp.Request's context, if any. It also returns the length of
// the body that follows, or -1 when unknown: then the answer's body ends
// with its carrier's (the push body, or the tunnel stream), or, when
// chunked is set, is sent in chunks.
func AnswerHead(resp *http.Response, id string, chunked bool) (head []byte, length int64) {
	length = resp.ContentLength
	if resp.Body == nil || resp.Body == http.NoBody {
		length = 0
	}
	var deadline time.Time
	hasDeadline := false
	if resp.Request != nil {
		deadline, hasDeadline = resp.Request.Context().Deadline()
	}
	// Without a length no Connection header is needed: one would reach
	// Prometheus through proxies that copy headers as they are.
	header := AnswerHeader(resp.Header, id, time.Until(deadline), hasDeadline, length)
	if chunked && length < 0 {
		header.Set("Transfer-Encoding", "chunked")
	}
	return EncodeAnswerHead(resp.StatusCode, resp.Status, header), length
}

// AnswerBody returns the body that follows the head of an answer of the
// given length.
func AnswerBody(resp *http.Response, length int64) io.Reader {
	if length == 0 || resp.Body == nil {
		return http.NoBody
	}
	return resp.Body
}

// WriteAnswer writes resp to w as the answer to scrape id, in the wire
// form: its head (with the body's length when known), then its body. With
// delimit, a body of unknown length is chunked, so that the answer ends
// before w does. A body that is shorter than the length it gave is an
// error; one that is longer is cut at the length.
func WriteAnswer(w io.Writer, resp *http.Response, id string, delimit bool) error {
	head, length := AnswerHead(resp, id, delimit)
	if _, err := w.Write(head); err != nil {
		return err
	}
	body := AnswerBody(resp, length)
	if length < 0 && delimit {
		chunks := httputil.NewChunkedWriter(w)
		if _, err := io.Copy(chunks, body); err != nil {
			return err
		}
		if err := chunks.Close(); err != nil {
			return err
		}
		// The last chunk is followed by an empty trailer.
		_, err := io.WriteString(w, "\r\n")
		return err
	}
	if length < 0 {
		_, err := io.Copy(w, body)
		return err
	}
	n, err := io.Copy(w, io.LimitReader(body, length))
	if err == nil && n < length {
		err = fmt.Errorf("target answer body ended after %d of its %d bytes", n, length)
	}
	return err
}

// DecodeAnswer reads an answer from r: its head, at most MaxAnswerHead
// bytes, and a final status; the body is left unread on the returned
// response. A length-less body ends where r ends.
func DecodeAnswer(r io.Reader) (*http.Response, error) {
	resp, err := NewAnswerReader(r).Next()
	if errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("not an HTTP response: %w", io.ErrUnexpectedEOF)
	}
	return resp, err
}

// AnswerReader reads the answers that a tunnel stream carries one after
// another (TunnelProtocolReuse), through one buffer.
type AnswerReader struct {
	limited io.LimitedReader // bounds each head
	reader  *bufio.Reader
}

// answerReadBuffer is the read buffer of an AnswerReader: a small answer
// is read in one piece.
const answerReadBuffer = 4 << 10

// NewAnswerReader returns an AnswerReader of the answers in r.
func NewAnswerReader(r io.Reader) *AnswerReader {
	a := &AnswerReader{limited: io.LimitedReader{R: r}}
	a.reader = bufio.NewReaderSize(&a.limited, answerReadBuffer)
	return a
}

// Next reads the next answer as DecodeAnswer does. The body of the one
// before must have been read to its end. An error that is io.EOF itself
// says that r ended before the answer's first byte.
func (a *AnswerReader) Next() (*http.Response, error) {
	a.limited.N = MaxAnswerHead - int64(a.reader.Buffered())
	if _, err := a.reader.Peek(1); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(a.reader, nil)
	if err != nil {
		if a.limited.N <= 0 {
			return nil, fmt.Errorf("answer head larger than %d bytes", MaxAnswerHead)
		}
		return nil, fmt.Errorf("not an HTTP response: %w", noEOF(err))
	}
	// The head was read under its own limit; the body is bounded by the
	// caller's reader.
	a.limited.N = math.MaxInt64
	// Only a final status can be relayed: net/http panics below 100, and a
	// 1xx would reach Prometheus as an empty 200.
	if resp.StatusCode < 200 {
		resp.Body.Close()
		return nil, fmt.Errorf("answer has status %03d, not a final status", resp.StatusCode)
	}
	if resp.Header.Get(HeaderID) == "" {
		resp.Body.Close()
		return nil, fmt.Errorf("answer has no %s header", HeaderID)
	}
	return resp, nil
}

// noEOF turns io.EOF, which Next keeps for an answer that never began,
// into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Delimited says whether the body of answer resp ends by itself (a length,
// or chunks) rather than with its carrier, so that the carrier may carry
// another answer after it.
func Delimited(resp *http.Response) bool {
	return resp.ContentLength >= 0 || slices.Contains(resp.TransferEncoding, "chunked")
}

// ErrorAnswer is the answer a client gives for a scrape it could not make:
// a 500 whose body is the reason, so that Prometheus sees it at once.
func ErrorAnswer(reason error) *http.Response {
	msg := reason.Error() + "\n"
	return &http.Response{
		StatusCode:    http.StatusInternalServerError,
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"text/plain; charset=utf-8"}},
		Body:          io.NopCloser(strings.NewReader(msg)),
		ContentLength: int64(len(msg)),
	}
}
