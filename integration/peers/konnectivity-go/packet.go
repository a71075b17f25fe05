package main

// The Konnectivity Packet from the reference proto, encoded by hand with
// protowire (no protoc in the build): the proto has no package, service
// ProxyService, rpc Proxy(stream Packet) returns (stream Packet).
//
// Encoding follows proto3 as the generated Go code does: default values are
// omitted, the oneof submessage is always written (DRAIN{} is `42 00`).

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// Packet types.
const (
	DialReq  = 0
	DialRsp  = 1
	CloseReq = 2
	CloseRsp = 3
	Data     = 4
	DialCls  = 5
	Drain    = 6
)

// Packet is a decoded Packet; only the fields of its type's payload are set.
type Packet struct {
	Type      int64
	Protocol  string // DialRequest.protocol
	Address   string // DialRequest.address
	Random    int64  // DialRequest, DialResponse, CloseDial
	Error     string // DialResponse, CloseResponse, Data
	ConnectID int64  // DialResponse, CloseRequest, CloseResponse, Data
	Data      []byte
	// Payload is the oneof field number that was present (0: none).
	Payload protowire.Number
}

// Oneof field numbers of Packet.payload.
const (
	fDialRequest   protowire.Number = 2
	fDialResponse  protowire.Number = 3
	fData          protowire.Number = 4
	fCloseRequest  protowire.Number = 5
	fCloseResponse protowire.Number = 6
	fCloseDial     protowire.Number = 7
	fDrain         protowire.Number = 8
)

func appendString(b []byte, n protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendInt(b []byte, n protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func appendBytes(b []byte, n protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, n, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// Marshal encodes p.
func (p *Packet) Marshal() []byte {
	var inner []byte
	var field protowire.Number
	switch p.Type {
	case DialReq:
		field = fDialRequest
		inner = appendString(inner, 1, p.Protocol)
		inner = appendString(inner, 2, p.Address)
		inner = appendInt(inner, 3, p.Random)
	case DialRsp:
		field = fDialResponse
		inner = appendString(inner, 1, p.Error)
		inner = appendInt(inner, 2, p.ConnectID)
		inner = appendInt(inner, 3, p.Random)
	case Data:
		field = fData
		inner = make([]byte, 0, len(p.Data)+32)
		inner = appendInt(inner, 1, p.ConnectID)
		inner = appendString(inner, 2, p.Error)
		inner = appendBytes(inner, 3, p.Data)
	case CloseReq:
		field = fCloseRequest
		inner = appendInt(inner, 1, p.ConnectID)
	case CloseRsp:
		field = fCloseResponse
		inner = appendString(inner, 1, p.Error)
		inner = appendInt(inner, 2, p.ConnectID)
	case DialCls:
		field = fCloseDial
		inner = appendInt(inner, 1, p.Random)
	case Drain:
		field = fDrain
	}
	out := make([]byte, 0, len(inner)+16)
	out = appendInt(out, 1, p.Type)
	if field != 0 {
		out = protowire.AppendTag(out, field, protowire.BytesType)
		out = protowire.AppendBytes(out, inner)
	}
	return out
}

// fields calls f for every field of a message, skipping none.
func fields(b []byte, f func(n protowire.Number, t protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		n, t, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		var v []byte
		var x uint64
		switch t {
		case protowire.VarintType:
			x, l = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		default:
			l = protowire.ConsumeFieldValue(n, t, b)
		}
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		if err := f(n, t, v, x); err != nil {
			return err
		}
	}
	return nil
}

// Unmarshal decodes a Packet, skipping unknown fields.
func Unmarshal(b []byte) (*Packet, error) {
	p := &Packet{}
	err := fields(b, func(n protowire.Number, t protowire.Type, v []byte, x uint64) error {
		switch {
		case n == 1 && t == protowire.VarintType:
			p.Type = int64(x)
		case n >= fDialRequest && n <= fDrain && t == protowire.BytesType:
			p.Payload = n
			return fields(v, func(m protowire.Number, t protowire.Type, v []byte, x uint64) error {
				return p.setPayloadField(n, m, t, v, x)
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("decoding Packet: %w", err)
	}
	return p, nil
}

func (p *Packet) setPayloadField(payload, m protowire.Number, t protowire.Type, v []byte, x uint64) error {
	isBytes := t == protowire.BytesType
	isInt := t == protowire.VarintType
	switch payload {
	case fDialRequest:
		switch {
		case m == 1 && isBytes:
			p.Protocol = string(v)
		case m == 2 && isBytes:
			p.Address = string(v)
		case m == 3 && isInt:
			p.Random = int64(x)
		}
	case fDialResponse:
		switch {
		case m == 1 && isBytes:
			p.Error = string(v)
		case m == 2 && isInt:
			p.ConnectID = int64(x)
		case m == 3 && isInt:
			p.Random = int64(x)
		}
	case fData:
		switch {
		case m == 1 && isInt:
			p.ConnectID = int64(x)
		case m == 2 && isBytes:
			p.Error = string(v)
		case m == 3 && isBytes:
			p.Data = append([]byte(nil), v...)
		}
	case fCloseRequest:
		if m == 1 && isInt {
			p.ConnectID = int64(x)
		}
	case fCloseResponse:
		switch {
		case m == 1 && isBytes:
			p.Error = string(v)
		case m == 2 && isInt:
			p.ConnectID = int64(x)
		}
	case fCloseDial:
		if m == 1 && isInt {
			p.Random = int64(x)
		}
	}
	return nil
}

// rawCodec hands grpc already-encoded Packets: the stream sends and
// receives *[]byte. Forced per call, it keeps content-type application/grpc
// exactly as the generated proto client sends it.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, errors.New("rawCodec: not *[]byte")
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return errors.New("rawCodec: not *[]byte")
	}
	*b = data
	return nil
}

func (rawCodec) Name() string { return "proto" }
