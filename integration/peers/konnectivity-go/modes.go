package main

// The test modes: each runs a complete Konnectivity exchange and reports
// what it saw as one JSON line.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"sort"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
)

// maxMessage is the largest gRPC message the server accepts (4 MiB).
const maxMessage = 4 << 20

// echoOnce is one dial as kubectl port-forward would make it: DIAL_REQ,
// one DATA round trip, CLOSE_REQ → CLOSE_RSP, then status OK.
func echoOnce(e *Endpoint, target string, i int) (int64, error) {
	t, err := Open(e)
	if err != nil {
		return 0, err
	}
	defer t.Close()
	// Old Go clients may send the same random from every process.
	random := int64(42)
	if i%2 == 1 {
		random = -int64(i)
	}
	rsp, err := t.Dial(target, random)
	if err != nil {
		return 0, err
	}
	if rsp.Error != "" || rsp.Random != random || rsp.ConnectID == 0 {
		return 0, fmt.Errorf("DIAL_RSP{error %q, random %d (sent %d), connectID %d}",
			rsp.Error, rsp.Random, random, rsp.ConnectID)
	}
	c := rsp.ConnectID
	msg := fmt.Sprintf("ping %d", i)
	if err := t.Send(&Packet{Type: Data, ConnectID: c, Data: []byte(msg)}); err != nil {
		return 0, err
	}
	got := ""
	for len(got) < len(msg) {
		p, err := t.Recv()
		if err != nil {
			return 0, err
		}
		if p == nil || p.Type != Data || p.ConnectID != c {
			return 0, fmt.Errorf("expected echoed DATA for %d, got %+v (status %s)", c, p, t.Code)
		}
		got += string(p.Data)
	}
	if got != msg {
		return 0, fmt.Errorf("echo %q, sent %q", got, msg)
	}
	if dropped, err := t.CloseReq(c); err != nil || dropped != 0 {
		return 0, fmt.Errorf("closing: %v (%d bytes after the echo)", err, dropped)
	}
	t.Finish()
	if t.Code != codes.OK {
		return 0, fmt.Errorf("stream ended with %s: %s", t.Code, t.Message)
	}
	return c, nil
}

func modeEcho(e *Endpoint, target string, n, parallel int) error {
	var mu sync.Mutex
	ids := map[int64]bool{}
	var failures []string
	var took []time.Duration
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				t0 := time.Now()
				c, err := echoOnce(e, target, i)
				dt := time.Since(t0)
				mu.Lock()
				if err != nil {
					failures = append(failures, fmt.Sprintf("dial %d: %v", i, err))
				} else {
					ids[c] = true
					took = append(took, dt)
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	sort.Slice(took, func(a, b int) bool { return took[a] < took[b] })
	pct := func(p float64) int64 {
		if len(took) == 0 {
			return 0
		}
		return took[int(p*float64(len(took)-1))].Microseconds()
	}
	if len(failures) > 5 {
		failures = failures[:5]
	}
	emit(map[string]interface{}{
		"mode": "echo", "dials": n, "ok": len(took), "unique_ids": len(ids),
		"failures": failures, "p50_us": pct(0.5), "p99_us": pct(0.99),
	})
	return nil
}

func modeDownload(e *Endpoint, target string) error {
	t, err := Open(e)
	if err != nil {
		return err
	}
	defer t.Close()
	rsp, err := t.Dial(target, 1)
	if err != nil {
		return err
	}
	if rsp.Error != "" {
		return fmt.Errorf("dial failed: %s", rsp.Error)
	}
	h := sha256.New()
	total, messages := 0, 0
	t0 := time.Now()
	closed := false
	for !closed {
		p, err := t.Recv()
		if err != nil {
			return err
		}
		if p == nil {
			return fmt.Errorf("stream ended before CLOSE_RSP after %d bytes: %s: %s", total, t.Code, t.Message)
		}
		switch p.Type {
		case Data:
			h.Write(p.Data)
			total += len(p.Data)
			messages++
		case CloseRsp:
			closed = p.ConnectID == rsp.ConnectID
		}
	}
	secs := time.Since(t0).Seconds()
	t.Finish()
	emit(map[string]interface{}{
		"mode": "download", "bytes": total, "sha256": hex.EncodeToString(h.Sum(nil)),
		"data_messages": messages, "largest_message": t.Largest, "secs": secs, "code": int(t.Code), "message": t.Message,
	})
	return nil
}

// dataMessageSize is the encoded size of a DATA packet with n data bytes.
func dataMessageSize(c int64, n int) int {
	inner := protowire.SizeTag(1) + protowire.SizeVarint(uint64(c)) +
		protowire.SizeTag(3) + protowire.SizeBytes(n)
	return protowire.SizeTag(1) + protowire.SizeVarint(Data) +
		protowire.SizeTag(fData) + protowire.SizeBytes(inner)
}

// largestData is the most data bytes whose DATA packet fits maxMessage.
func largestData(c int64) int {
	n := maxMessage
	for dataMessageSize(c, n) > maxMessage {
		n--
	}
	return n
}

func modeUpload(e *Endpoint, target string, size int64, chunkArg string) error {
	t, err := Open(e)
	if err != nil {
		return err
	}
	defer t.Close()
	rsp, err := t.Dial(target, 2)
	if err != nil {
		return err
	}
	if rsp.Error != "" {
		return fmt.Errorf("dial failed: %s", rsp.Error)
	}
	c := rsp.ConnectID
	chunk := 0
	if chunkArg == "max" {
		chunk = largestData(c)
	} else if chunk, err = strconv.Atoi(chunkArg); err != nil || chunk <= 0 {
		return fmt.Errorf("bad -chunk %q", chunkArg)
	}
	if size == 0 {
		size = int64(chunk)
	}
	data := make([]byte, size)
	rand.New(rand.NewSource(size)).Read(data)
	sent := sha256.Sum256(data)
	sendErr := make(chan error, 1)
	t0 := time.Now()
	go func() {
		for off := 0; off < len(data); off += chunk {
			end := off + chunk
			if end > len(data) {
				end = len(data)
			}
			if err := t.Send(&Packet{Type: Data, ConnectID: c, Data: data[off:end]}); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	h := sha256.New()
	echoed := int64(0)
	for echoed < size {
		p, err := t.Recv()
		if err != nil {
			return err
		}
		if p == nil {
			break
		}
		if p.Type == Data {
			h.Write(p.Data)
			echoed += int64(len(p.Data))
		}
	}
	secs := time.Since(t0).Seconds()
	result := map[string]interface{}{
		"mode": "upload", "bytes": size, "echoed": echoed, "secs": secs,
		"message_size": dataMessageSize(c, chunk),
		"sent_sha256":  hex.EncodeToString(sent[:]), "echoed_sha256": hex.EncodeToString(h.Sum(nil)),
		"largest_message": t.Largest,
	}
	if !t.Ended {
		if err := <-sendErr; err != nil {
			return fmt.Errorf("sending: %w", err)
		}
		if _, err := t.CloseReq(c); err != nil {
			return err
		}
		t.Finish()
	}
	result["code"], result["message"] = int(t.Code), t.Message
	emit(result)
	return nil
}

func modeDial(e *Endpoint, target string, random int64) error {
	t, err := Open(e)
	if err != nil {
		return err
	}
	defer t.Close()
	rsp, err := t.Dial(target, random)
	if err != nil {
		return err
	}
	if rsp.Error == "" {
		if _, err := t.CloseReq(rsp.ConnectID); err != nil {
			return err
		}
	}
	t.Finish()
	emit(map[string]interface{}{
		"mode": "dial", "error": rsp.Error, "connect_id": rsp.ConnectID, "random": rsp.Random,
		"code": int(t.Code), "message": t.Message,
	})
	return nil
}

// modeDialCls starts a dial that cannot finish (the target accepts nothing),
// cancels it with DIAL_CLS as konnectivity-client does when the caller's
// context ends, and reports whether and how fast the server ended the call.
func modeDialCls(e *Endpoint, target string, random int64, waitMs int) error {
	t, err := Open(e)
	if err != nil {
		return err
	}
	defer t.Close()
	if err := t.Send(&Packet{Type: DialReq, Protocol: "tcp", Address: target, Random: random}); err != nil {
		return err
	}
	time.Sleep(time.Duration(waitMs) * time.Millisecond)
	t0 := time.Now()
	if err := t.Send(&Packet{Type: DialCls, Random: random}); err != nil {
		return err
	}
	done := make(chan []int64, 1)
	go func() {
		types := []int64{}
		for {
			p, err := t.Recv()
			if err != nil || p == nil {
				done <- types
				return
			}
			types = append(types, p.Type)
		}
	}()
	result := map[string]interface{}{"mode": "dialcls"}
	select {
	case types := <-done:
		result["ended"] = true
		result["ended_ms"] = time.Since(t0).Milliseconds()
		result["packets"] = types
		result["code"], result["message"] = int(t.Code), t.Message
	case <-time.After(5 * time.Second):
		result["ended"] = false
	}
	emit(result)
	return nil
}

// modeHold dials a large source, reads a little, reports, then stops
// reading and waits to be killed with data in flight both ways.
func modeHold(e *Endpoint, target string) error {
	t, err := Open(e)
	if err != nil {
		return err
	}
	rsp, err := t.Dial(target, 3)
	if err != nil {
		return err
	}
	if rsp.Error != "" {
		return fmt.Errorf("dial failed: %s", rsp.Error)
	}
	if err := t.Send(&Packet{Type: Data, ConnectID: rsp.ConnectID, Data: []byte("hello")}); err != nil {
		return err
	}
	for n := 0; n < 3; {
		p, err := t.Recv()
		if err != nil {
			return err
		}
		if p == nil {
			return fmt.Errorf("stream ended: %s: %s", t.Code, t.Message)
		}
		if p.Type == Data {
			n++
		}
	}
	emit(map[string]interface{}{"event": "receiving", "connect_id": rsp.ConnectID})
	// Bounded: the test kills this process long before.
	time.Sleep(60 * time.Second)
	return fmt.Errorf("not killed within 60 s")
}
