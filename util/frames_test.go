package util

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// recordingConn records each write as one element.
type recordingConn struct {
	bytes.Buffer
	writes [][]byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, append([]byte(nil), p...))
	return len(p), nil
}

func (c *recordingConn) Close() error { return nil }

func yamuxHeader(frameType byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = frameType
	binary.BigEndian.PutUint32(h[4:], 7)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestTunnelConnWritesADataFramesHeaderAndBodyAtOnce(t *testing.T) {
	body := bytes.Repeat([]byte("x"), 2048)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		writes [][]byte
	}{
		{
			name:   "a data frame leaves in one write",
			frames: [][]byte{yamuxHeader(yamuxTypeData, 2048), body},
			writes: [][]byte{append(yamuxHeader(yamuxTypeData, 2048), body...)},
		},
		{
			name:   "a window update or ping has no body and leaves at once",
			frames: [][]byte{yamuxHeader(1, 1<<16), yamuxHeader(2, 1)},
			writes: [][]byte{yamuxHeader(1, 1<<16), yamuxHeader(2, 1)},
		},
		{
			name:   "a data frame without a body (a bare FIN) leaves at once",
			frames: [][]byte{yamuxHeader(yamuxTypeData, 0)},
			writes: [][]byte{yamuxHeader(yamuxTypeData, 0)},
		},
		{
			name:   "a body larger than the joining bound leaves after its header",
			frames: [][]byte{yamuxHeader(yamuxTypeData, MaxJoinedFrame+1), make([]byte, MaxJoinedFrame+1)},
			writes: [][]byte{yamuxHeader(yamuxTypeData, MaxJoinedFrame+1), make([]byte, MaxJoinedFrame+1)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingConn{}
			conn := TunnelConn(rec, MaxJoinedFrame)
			for _, f := range tc.frames {
				n, err := conn.Write(f)
				if err != nil || n != len(f) {
					t.Fatalf("Write(%d bytes) = %d, %v", len(f), n, err)
				}
			}
			if len(rec.writes) != len(tc.writes) {
				t.Fatalf("got %d writes, want %d", len(rec.writes), len(tc.writes))
			}
			for i := range tc.writes {
				if !bytes.Equal(rec.writes[i], tc.writes[i]) {
					t.Errorf("write %d differs: got %d bytes, want %d", i, len(rec.writes[i]), len(tc.writes[i]))
				}
			}
		})
	}
}

func TestTunnelConnKeepsItsJoiningBufferOnlyUpToItsBound(t *testing.T) {
	for _, tc := range []struct {
		name     string
		body     int
		wantKept bool
	}{
		{"a frame within the bound leaves the buffer kept", 1000, true},
		{"a larger frame's buffer is let go", 5000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := TunnelConn(&recordingConn{}, 4096).(*frameConn)
			conn.Write(yamuxHeader(yamuxTypeData, uint32(tc.body)))
			conn.Write(make([]byte, tc.body))
			if kept := conn.joined != nil; kept != tc.wantKept {
				t.Errorf("buffer kept = %v, want %v", kept, tc.wantKept)
			}
		})
	}
}
