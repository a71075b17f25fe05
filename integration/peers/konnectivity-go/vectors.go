package main

// selftest: the encoder and decoder against the test vectors of the
// reference (produced by the Go code generated from the proto), so a
// wire-format slip in this hand-written codec fails loudly instead of
// passing as a server bug.

import (
	"encoding/hex"
	"fmt"
	"reflect"
)

var vectors = []struct {
	p   Packet
	hex string
}{
	{Packet{Type: DialReq, Protocol: "tcp", Address: "10.0.0.5:10250", Random: 42, Payload: fDialRequest},
		"12170a03746370120e31302e302e302e353a3130323530182a"},
	{Packet{Type: DialRsp, Random: 42, ConnectID: 7, Payload: fDialResponse}, "08011a041007182a"},
	{Packet{Type: DialRsp, Random: 42, Error: "refused", Payload: fDialResponse}, "08011a0b0a0772656675736564182a"},
	{Packet{Type: Data, ConnectID: 7, Data: []byte("hi"), Payload: fData}, "0804220608071a026869"},
	{Packet{Type: CloseReq, ConnectID: 7, Payload: fCloseRequest}, "08022a020807"},
	{Packet{Type: CloseRsp, ConnectID: 7, Payload: fCloseResponse}, "080332021007"},
	{Packet{Type: DialCls, Random: 42, Payload: fCloseDial}, "08053a02082a"},
	{Packet{Type: DialReq, Protocol: "tcp", Address: "a:1", Random: -1, Payload: fDialRequest},
		"12150a037463701203613a3118ffffffffffffffffff01"},
	{Packet{Type: Drain, Payload: fDrain}, "08064200"},
}

func modeSelftest() error {
	for _, v := range vectors {
		got := hex.EncodeToString(v.p.Marshal())
		if got != v.hex {
			return fmt.Errorf("encoding %+v: %s, want %s", v.p, got, v.hex)
		}
		b, _ := hex.DecodeString(v.hex)
		d, err := Unmarshal(b)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(*d, v.p) {
			return fmt.Errorf("decoding %s: %+v, want %+v", v.hex, *d, v.p)
		}
	}
	emit(map[string]interface{}{"mode": "selftest", "vectors": len(vectors)})
	return nil
}
