package mux

import (
	"encoding/binary"
	"fmt"
)

// A frame's header: version, type, flags, stream ID and length, in network
// byte order. A data frame's length is the size of the body that follows;
// a window update's is the credit it grants; a ping's is its opaque value;
// a go-away's is its reason.
const headerSize = 12

// protocolVersion is the only version of the frames.
const protocolVersion = 0

// Frame types.
const (
	typeData         = 0
	typeWindowUpdate = 1
	typePing         = 2
	typeGoAway       = 3
)

// Frame flags.
const (
	flagSYN = 1 << 0 // opens a stream; on a ping, asks for an answer
	flagACK = 1 << 1 // accepts a stream; on a ping, answers one
	flagFIN = 1 << 2 // the sender will send no more on the stream
	flagRST = 1 << 3 // the stream is over, for both ends
)

// Go-away reasons.
const (
	goAwayNormal        = 0
	goAwayProtocolError = 1
	goAwayInternalError = 2
)

// initialWindow is every stream's window when it opens, fixed by the
// protocol; a larger one is granted with a window update.
const initialWindow = 256 << 10

// header is one frame's header.
type header [headerSize]byte

// makeHeader encodes a frame's header.
func makeHeader(typ uint8, flags uint16, streamID, length uint32) header {
	var h header
	h[0] = protocolVersion
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], streamID)
	binary.BigEndian.PutUint32(h[8:12], length)
	return h
}

func (h header) version() uint8    { return h[0] }
func (h header) typ() uint8        { return h[1] }
func (h header) flags() uint16     { return binary.BigEndian.Uint16(h[2:4]) }
func (h header) streamID() uint32  { return binary.BigEndian.Uint32(h[4:8]) }
func (h header) length() uint32    { return binary.BigEndian.Uint32(h[8:12]) }
func (h header) has(f uint16) bool { return h.flags()&f != 0 }

// check says what is wrong with a header read from a peer, if anything.
func (h header) check() error {
	if h.version() != protocolVersion {
		return fmt.Errorf("%w: version %d", ErrProtocol, h.version())
	}
	if h.typ() > typeGoAway {
		return fmt.Errorf("%w: frame type %d", ErrProtocol, h.typ())
	}
	if (h.typ() == typePing || h.typ() == typeGoAway) != (h.streamID() == 0) {
		return fmt.Errorf("%w: frame type %d on stream %d", ErrProtocol, h.typ(), h.streamID())
	}
	return nil
}

func (h header) String() string {
	return fmt.Sprintf("type %d flags %#x stream %d length %d", h.typ(), h.flags(), h.streamID(), h.length())
}
