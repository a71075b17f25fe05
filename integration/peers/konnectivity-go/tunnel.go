package main

// One Konnectivity tunnel the way kube-apiserver opens it in GRPC mode
// (konnectivity-client's CreateSingleUseGrpcTunnel): grpc.Dial with the
// socket path as target and a context dialer for the Unix socket, insecure
// credentials, one connection and one /ProxyService/Proxy stream per dial.
// grpc-go then sends the socket path as :authority, which is the point.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Endpoint is where the front end listens: a Unix socket, or TCP + mTLS.
type Endpoint struct {
	UDS  string
	TCP  string
	CA   string
	Cert string
	Key  string
}

// dialLimit bounds connection setup, as kube-apiserver's dial timeout does.
const dialLimit = 10 * time.Second

func (e *Endpoint) options() ([]grpc.DialOption, string, error) {
	opts := []grpc.DialOption{grpc.WithBlock()}
	if e.UDS != "" {
		path := e.UDS
		opts = append(opts,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			}),
			// grpc-go 1.33 (Debian) predates credentials/insecure;
			// kube-apiserver up to 1.22 used exactly this option.
			grpc.WithInsecure())
		return opts, path, nil
	}
	pem, err := ioutil.ReadFile(e.CA)
	if err != nil {
		return nil, "", fmt.Errorf("reading CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, "", errors.New("no certificate in the CA file")
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if e.Cert != "" {
		pair, err := tls.LoadX509KeyPair(e.Cert, e.Key)
		if err != nil {
			return nil, "", fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	return opts, e.TCP, nil
}

// Tunnel is one connection carrying one Proxy stream.
type Tunnel struct {
	cc     *grpc.ClientConn
	stream grpc.ClientStream
	cancel context.CancelFunc
	// Set when the stream ended: the gRPC status.
	Code    codes.Code
	Message string
	Ended   bool
	// Largest gRPC message received (protobuf bytes).
	Largest int
}

// Open dials the front end and starts the Proxy stream.
func Open(e *Endpoint) (*Tunnel, error) {
	opts, target, err := e.options()
	if err != nil {
		return nil, err
	}
	dctx, dcancel := context.WithTimeout(context.Background(), dialLimit)
	defer dcancel()
	cc, err := grpc.DialContext(dctx, target, opts...)
	if err != nil {
		return nil, fmt.Errorf("grpc.Dial %s: %w", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	desc := &grpc.StreamDesc{StreamName: "Proxy", ServerStreams: true, ClientStreams: true}
	stream, err := cc.NewStream(ctx, desc, "/ProxyService/Proxy", grpc.ForceCodec(rawCodec{}))
	if err != nil {
		cancel()
		cc.Close()
		return nil, fmt.Errorf("opening the Proxy stream: %w", err)
	}
	return &Tunnel{cc: cc, stream: stream, cancel: cancel}, nil
}

// Send writes one packet (blocking on HTTP/2 flow control).
func (t *Tunnel) Send(p *Packet) error {
	b := p.Marshal()
	return t.stream.SendMsg(&b)
}

// Recv is the next packet, or nil once the stream ended (see Code, Message).
func (t *Tunnel) Recv() (*Packet, error) {
	if t.Ended {
		return nil, nil
	}
	var b []byte
	err := t.stream.RecvMsg(&b)
	if err == io.EOF {
		t.Ended, t.Code = true, codes.OK
		return nil, nil
	}
	if err != nil {
		st := status.Convert(err)
		t.Ended, t.Code, t.Message = true, st.Code(), st.Message()
		return nil, nil
	}
	if len(b) > t.Largest {
		t.Largest = len(b)
	}
	return Unmarshal(b)
}

// Dial sends DIAL_REQ and waits for the DIAL_RSP.
func (t *Tunnel) Dial(address string, random int64) (*Packet, error) {
	err := t.Send(&Packet{Type: DialReq, Protocol: "tcp", Address: address, Random: random})
	if err != nil {
		return nil, fmt.Errorf("sending DIAL_REQ: %w", err)
	}
	for {
		p, err := t.Recv()
		if err != nil {
			return nil, err
		}
		if p == nil {
			return nil, fmt.Errorf("stream ended before DIAL_RSP: %s: %s", t.Code, t.Message)
		}
		if p.Type == DialRsp {
			return p, nil
		}
	}
}

// CloseReq sends CLOSE_REQ{id} and reads until CLOSE_RSP for it, dropping
// DATA still in flight; returns the bytes dropped.
func (t *Tunnel) CloseReq(id int64) (int, error) {
	if err := t.Send(&Packet{Type: CloseReq, ConnectID: id}); err != nil {
		return 0, fmt.Errorf("sending CLOSE_REQ: %w", err)
	}
	dropped := 0
	for {
		p, err := t.Recv()
		if err != nil {
			return dropped, err
		}
		if p == nil {
			return dropped, fmt.Errorf("stream ended before CLOSE_RSP: %s: %s", t.Code, t.Message)
		}
		switch p.Type {
		case CloseRsp:
			if p.ConnectID != id {
				return dropped, fmt.Errorf("CLOSE_RSP for %d, want %d", p.ConnectID, id)
			}
			return dropped, nil
		case Data:
			dropped += len(p.Data)
		}
	}
}

// Finish half-closes and waits for the server to end the stream.
func (t *Tunnel) Finish() {
	_ = t.stream.CloseSend()
	for !t.Ended {
		if p, err := t.Recv(); err != nil || p == nil {
			break
		}
	}
}

// Close tears the stream and connection down.
func (t *Tunnel) Close() {
	t.cancel()
	t.cc.Close()
}
