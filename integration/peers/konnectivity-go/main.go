// konnectivity-peer: a Konnectivity gRPC client built on grpc-go (not on
// the Rust h2 crate), which the integration tests and tunnel-bench drive
// against the real tunnel-server. Every mode prints one JSON object per
// line on stdout; failures of the protocol are reported in that JSON (the
// test asserts on them), failures to run at all exit non-zero.
//
//	konnectivity-peer -uds SOCK MODE [flags]
//	konnectivity-peer -tcp HOST:PORT -ca CA -cert CRT -key KEY MODE [flags]
//
// Modes: echo, download, upload, dial, dialcls, hold, capture, forward, selftest.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
)

func emit(v map[string]interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		fatal(err)
	}
	os.Stdout.Write(append(b, '\n'))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "konnectivity-peer:", err)
	os.Exit(1)
}

func main() {
	var e Endpoint
	flag.StringVar(&e.UDS, "uds", "", "Unix socket of the gRPC front end (kube-apiserver's udsName)")
	flag.StringVar(&e.TCP, "tcp", "", "host:port of the mTLS front end (--proxy-addr)")
	flag.StringVar(&e.CA, "ca", "", "CA that signed the server certificate (with -tcp)")
	flag.StringVar(&e.Cert, "cert", "", "client certificate (with -tcp)")
	flag.StringVar(&e.Key, "key", "", "client key (with -tcp)")
	flag.Parse()
	if flag.NArg() < 1 {
		fatal(fmt.Errorf("no mode given"))
	}
	mode, args := flag.Arg(0), flag.Args()[1:]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	target := fs.String("target", "", "host:port the agent dials")
	n := fs.Int("n", 1, "echo: number of dials")
	parallel := fs.Int("parallel", 1, "echo: dials in flight at once")
	bytes := fs.Int64("bytes", 0, "upload: bytes to send (0 with -chunk max: one largest message)")
	chunk := fs.String("chunk", "32768", "upload: DATA size in bytes, or max for the largest that fits a 4 MiB message")
	random := fs.Int64("random", 7, "dial, dialcls: DIAL_REQ random")
	waitMs := fs.Int("wait-ms", 300, "dialcls: time before DIAL_CLS")
	listen := fs.String("listen", "", "capture: Unix socket to listen on")
	mapping := fs.String("map", "", "forward: comma-separated target host:port list, one local listener each")
	if err := fs.Parse(args); err != nil {
		fatal(err)
	}
	if mode != "capture" && mode != "selftest" && e.UDS == "" && e.TCP == "" {
		fatal(fmt.Errorf("-uds or -tcp is required"))
	}
	var err error
	switch mode {
	case "echo":
		err = modeEcho(&e, *target, *n, *parallel)
	case "download":
		err = modeDownload(&e, *target)
	case "upload":
		err = modeUpload(&e, *target, *bytes, *chunk)
	case "dial":
		err = modeDial(&e, *target, *random)
	case "dialcls":
		err = modeDialCls(&e, *target, *random, *waitMs)
	case "hold":
		err = modeHold(&e, *target)
	case "capture":
		err = modeCapture(*listen)
	case "selftest":
		err = modeSelftest()
	case "forward":
		err = modeForward(&e, *mapping)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fatal(err)
	}
}
