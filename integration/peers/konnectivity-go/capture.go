package main

// capture: a minimal HTTP/2 listener on a Unix socket that records the
// request headers of the first stream a client opens (decoded with the
// hpack package grpc-go itself uses) and prints them. The tests point the
// gRPC clients at it to see what they put in :authority.

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

func modeCapture(path string) error {
	if path == "" {
		return fmt.Errorf("capture needs -listen")
	}
	_ = os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer l.Close()
	emit(map[string]interface{}{"event": "listening", "path": path})
	conn, err := l.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(conn, preface); err != nil {
		return fmt.Errorf("reading the client preface: %w", err)
	}
	if string(preface) != http2.ClientPreface {
		return fmt.Errorf("not an HTTP/2 client preface: %q", preface)
	}
	fr := http2.NewFramer(conn, conn)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("reading frames: %w", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					return err
				}
			}
		case *http2.MetaHeadersFrame:
			headers := map[string]string{}
			for _, h := range f.Fields {
				headers[h.Name] = h.Value
			}
			emit(map[string]interface{}{"mode": "capture", "headers": headers})
			_ = fr.WriteGoAway(f.StreamID, http2.ErrCodeNo, nil)
			return nil
		}
	}
}
