package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// errAnswerSent is writing to a detached poll's answer after it was sent.
var errAnswerSent = errors.New("poll answer already sent")

// connResponse is an http.ResponseWriter for a detached poll: it keeps
// the status, headers and body, and sends them as one HTTP/1.1 response
// in one write on Flush or send.
type connResponse struct {
	conn   net.Conn
	header http.Header
	status int
	body   []byte
	sent   bool
	err    error
}

// Header returns the headers to send.
func (c *connResponse) Header() http.Header {
	if c.header == nil {
		c.header = http.Header{}
	}
	return c.header
}

// WriteHeader sets the status, once.
func (c *connResponse) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
	}
}

// Write adds b to the body.
func (c *connResponse) Write(b []byte) (int, error) {
	if c.sent {
		return 0, errAnswerSent
	}
	c.WriteHeader(http.StatusOK)
	c.body = append(c.body, b...)
	return len(b), nil
}

// SetWriteDeadline bounds sending, for http.ResponseController.
func (c *connResponse) SetWriteDeadline(t time.Time) error {
	return c.conn.SetWriteDeadline(t)
}

// FlushError sends the response, for http.ResponseController.
func (c *connResponse) FlushError() error { return c.send() }

// send writes the response once and returns how that went.
func (c *connResponse) send() error {
	if c.sent {
		return c.err
	}
	c.sent = true
	c.WriteHeader(http.StatusOK)
	h := c.Header()
	if bodyAllowed(c.status) && h.Get("Content-Length") == "" {
		h.Set("Content-Length", strconv.Itoa(len(c.body)))
	}
	if !bodyAllowed(c.status) {
		c.body = c.body[:0]
	}
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	buf := bytes.NewBuffer(make([]byte, 0, 256+len(c.body)))
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", c.status, http.StatusText(c.status))
	_ = h.Write(buf)
	buf.WriteString("\r\n")
	buf.Write(c.body)
	_, c.err = c.conn.Write(buf.Bytes())
	return c.err
}

// bodyAllowed says whether a response with status code has a body.
func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}
