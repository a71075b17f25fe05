package main

// forward: the bench adapter. One local TCP listener per target; every
// accepted connection becomes one Konnectivity tunnel (own connection, own
// stream, DIAL_REQ) and its bytes travel as DATA packets, cut the way
// kube-apiserver's io.Copy cuts them (32 KiB reads). The connection's EOF
// sends CLOSE_REQ; CLOSE_RSP (the edge closed) ends the local write side.

import (
	"fmt"
	"math/rand"
	"net"
	"os"
	"strings"
)

func modeForward(e *Endpoint, mapping string) error {
	var addrs []string
	for _, target := range strings.Split(mapping, ",") {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addrs = append(addrs, l.Addr().String())
		go func(l net.Listener, target string) {
			for {
				c, err := l.Accept()
				if err != nil {
					fmt.Fprintln(os.Stderr, "accept:", err)
					return
				}
				go forwardOne(e, c.(*net.TCPConn), target)
			}
		}(l, target)
	}
	emit(map[string]interface{}{"event": "listening", "listeners": addrs})
	select {}
}

func forwardOne(e *Endpoint, c *net.TCPConn, target string) {
	defer c.Close()
	t, err := Open(e)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		return
	}
	defer t.Close()
	rsp, err := t.Dial(target, rand.Int63())
	if err != nil || rsp.Error != "" {
		fmt.Fprintln(os.Stderr, "dial:", err, rsp)
		return
	}
	id := rsp.ConnectID
	down := make(chan struct{})
	go func() {
		defer close(down)
		for {
			p, err := t.Recv()
			if err != nil || p == nil || p.Type == CloseRsp {
				break
			}
			if p.Type == Data {
				if _, err := c.Write(p.Data); err != nil {
					break
				}
			}
		}
		_ = c.CloseWrite()
	}()
	buf := make([]byte, 32*1024)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if t.Send(&Packet{Type: Data, ConnectID: id, Data: buf[:n]}) != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = t.Send(&Packet{Type: CloseReq, ConnectID: id})
	<-down
}
