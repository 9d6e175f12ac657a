package mux

import (
	"io"
	"math"
	"sync"
	"testing"
	"time"
)

// fuzzWait bounds how long one input may keep the session busy; an input
// that needs more is a hang.
const fuzzWait = 10 * time.Second

// seedFrames joins frames into the bytes a peer sends.
func seedFrames(frames ...frame) []byte {
	var b []byte
	for _, f := range frames {
		b = append(append(b, f.h[:]...), f.body...)
	}
	return b
}

func FuzzSessionSurvivesAnyBytesFromThePeer(f *testing.F) {
	f.Add([]byte{})
	f.Add(seedFrames(frame{h: makeHeader(typePing, flagSYN, 0, 7)}))
	f.Add(seedFrames(frame{h: makeHeader(typePing, flagACK, 0, 1)}))
	f.Add(seedFrames(
		frame{h: synFrame(1)},
		frame{h: makeHeader(typeData, 0, 1, 5), body: []byte("hello")},
		frame{h: makeHeader(typeData, flagFIN, 1, 3), body: []byte("bye")},
	))
	f.Add(seedFrames(
		frame{h: makeHeader(typeData, flagSYN, 3, 2), body: []byte("hi")},
		frame{h: makeHeader(typeWindowUpdate, flagRST, 3, 0)},
		frame{h: makeHeader(typeData, 0, 3, 2), body: []byte("hi")},
	))
	f.Add(seedFrames(
		frame{h: synFrame(1)},
		frame{h: makeHeader(typeWindowUpdate, 0, 1, 1<<20)},
		frame{h: makeHeader(typeWindowUpdate, flagFIN, 1, 0)},
		frame{h: synFrame(5)},
		frame{h: makeHeader(typeGoAway, 0, 0, goAwayNormal)},
	))
	f.Add(seedFrames(frame{h: makeHeader(typeData, 0, 9, 4), body: []byte("lost")}))
	f.Add(seedFrames(frame{h: makeHeader(typeWindowUpdate, flagSYN, 1, math.MaxUint32)}))
	f.Add(seedFrames(frame{h: makeHeader(typeGoAway, 0, 0, goAwayProtocolError)}))
	f.Add(seedFrames(frame{h: synFrame(2)}))
	f.Add(seedFrames(frame{h: makeHeader(typeData, 0, 1, initialWindow+1)}))
	f.Fuzz(func(t *testing.T, input []byte) {
		a, b := pipeConns(t)
		s := Server(b, Config{MaxInbound: 4, AcceptBacklog: 2, CloseTimeout: time.Millisecond, ReadBufferIdle: time.Millisecond})
		var wg sync.WaitGroup
		t.Cleanup(func() {
			s.Close()
			wg.Wait()
		})
		// What the session sends is read and dropped, so that its writes
		// never wait for the peer.
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(io.Discard, a)
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				st, err := s.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = st.SetDeadline(time.Now().Add(fuzzWait))
					buf := make([]byte, 1024)
					for range 1024 {
						if _, err := st.Read(buf); err != nil {
							break
						}
					}
					_, _ = st.Write([]byte("answer"))
					st.Close()
				}()
			}
		}()
		// A write to net.Pipe returns once the session read it all, or
		// fails once the session closed.
		_ = a.SetWriteDeadline(time.Now().Add(fuzzWait))
		if _, err := a.Write(input); err != nil && !s.IsClosed() {
			t.Fatalf("the session took only part of the input and is still open: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
