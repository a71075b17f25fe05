//! The gRPC front end against real gRPC stacks that share no code with the
//! server or with the h2 crate: grpc-go (dialing exactly like
//! kube-apiserver's konnectivity-client: socket path as target, so as
//! `:authority`) and grpcio (`grpc.default_authority` = socket path). Each
//! peer runs the gRPC acceptance over the Unix socket and over the mTLS TCP
//! front end; see `integration::peers` for the programs.
//!
//! Without `go` / `python3 -c 'import grpc'` a test prints a skip notice,
//! except with `CI=true`, where it fails naming what is missing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::peers::{next_event, Endpoint, Peer, PeerProgram};
use integration::process::metric_value;
use integration::services::{echo_server, hanging_server, pattern, sha256_hex, source_server};
use integration::{Cluster, ClusterOptions};
use serde_json::Value;

const BULK: usize = 20 * 1024 * 1024;
/// Down direction of the large-message case: more than one 4 MiB message.
const BIG_DOWN: usize = 5 * 1024 * 1024;
const MAX_MESSAGE: u64 = 4 * 1024 * 1024;

fn arg(k: &str, v: impl std::fmt::Display) -> String {
    format!("--{k}={v}")
}

fn server_metric(c: &Cluster, sample: &str) -> f64 {
    metric_value(&c.server.metrics().unwrap(), sample).unwrap_or(0.0)
}

/// Waits until the server has no gRPC stream and the agent none at all.
async fn wait_streams_closed(c: &Cluster, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let server = server_metric(c, "tunnel_server_streams_active{frontend=\"grpc\"}");
        let agent = metric_value(&c.agent().metrics().unwrap(), "tunnel_agent_streams_active")
            .unwrap_or(0.0);
        if server == 0.0 && agent == 0.0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "after {limit:?} the server still has {server} gRPC streams open, the agent {agent}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn n(v: &Value, k: &str) -> i64 {
    v[k].as_i64()
        .unwrap_or_else(|| panic!("no number {k} in {v}"))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("no string {k} in {v}"))
}

/// A successful bulk echo: everything came back, in order, and the call ended OK.
fn assert_echoed(v: &Value, bytes: usize) {
    assert_eq!(n(v, "bytes"), bytes as i64, "{v}");
    assert_eq!(n(v, "echoed"), bytes as i64, "{v}");
    assert_eq!(s(v, "sent_sha256"), s(v, "echoed_sha256"), "{v}");
    assert_eq!(n(v, "code"), 0, "{v}");
}

/// A download that arrived whole, in DATA messages of at most 64 KiB.
fn assert_downloaded(v: &Value, want: &[u8]) {
    assert_eq!(n(v, "bytes"), want.len() as i64, "{v}");
    assert_eq!(s(v, "sha256"), sha256_hex(want), "{v}");
    assert!(n(v, "largest_message") <= 64 * 1024, "{v}");
    assert_eq!(n(v, "code"), 0, "{v}");
}

/// The whole acceptance for one peer on one front end.
async fn acceptance(peer: Peer, tls: bool) {
    let Some(prog) = PeerProgram::for_test(peer) else {
        return;
    };
    let echo = echo_server().await.unwrap();
    let down = pattern(BULK, 7);
    let source = source_server(down.clone()).await.unwrap();
    let big_down = pattern(BIG_DOWN, 9);
    let big_source = source_server(big_down.clone()).await.unwrap();
    let endless = source_server(pattern(64 * 1024 * 1024, 3)).await.unwrap();
    let (hang, _hang_guard) = hanging_server().await.unwrap();
    let refused: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let allow: Vec<String> = [echo, source, big_source, endless, hang, refused]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut opts = ClusterOptions::allowing(&allow, &[]).server_args(&["--dial-timeout=30s"]);
    opts.server.proxy = true;
    let c = Cluster::start(opts);
    let ep = if tls {
        Endpoint::Tls {
            addr: c.server.proxy_addr.unwrap(),
            ca: c.pki.path("ca.crt"),
            cert: c.pki.path("proxy-client.crt"),
            key: c.pki.path("proxy-client.key"),
        }
    } else {
        Endpoint::Uds(c.uds())
    };
    let started = Instant::now();
    let run = |mode: &'static str, args: Vec<String>| {
        let (prog, ep) = (prog.clone(), ep.clone());
        async move { prog.run(&ep, mode, &args).await.unwrap() }
    };
    // Everything that does not watch the stream gauge runs at once.
    let (seq, conc, bulk_down, bulk_up, unknown, refused_rsp, big_up, big_dn, cls) = tokio::join!(
        run("echo", vec![arg("target", echo), arg("n", 100)]),
        run(
            "echo",
            vec![arg("target", echo), arg("n", 50), arg("parallel", 50)]
        ),
        run("download", vec![arg("target", source)]),
        run("upload", vec![arg("target", echo), arg("bytes", BULK)]),
        run(
            "dial",
            vec![arg("target", "10.9.9.9:10250"), arg("random", 5)]
        ),
        run("dial", vec![arg("target", refused), arg("random", -6)]),
        run("upload", vec![arg("target", echo), arg("chunk", "max")]),
        run("download", vec![arg("target", big_source)]),
        run("dialcls", vec![arg("target", hang), arg("random", 99)]),
    );
    eprintln!(
        "{peer} (tls {tls}): parallel cases done in {:?}",
        started.elapsed()
    );

    // 100 sequential and 50 concurrent dials, each its own connection.
    for (v, want) in [(&seq, 100), (&conc, 50)] {
        assert_eq!(n(v, "ok"), want, "{v}");
        assert_eq!(n(v, "unique_ids"), want, "connectIDs are unique: {v}");
    }
    eprintln!(
        "{peer} (tls {tls}): sequential dial+echo+close p50 {} µs, p99 {} µs",
        n(&seq, "p50_us"),
        n(&seq, "p99_us")
    );
    // 20 MiB each way, checksummed.
    assert_downloaded(&bulk_down, &down);
    if let Some(m) = bulk_down["data_messages"].as_i64().filter(|m| *m > 0) {
        eprintln!(
            "{peer} (tls {tls}): {} bytes downloaded in {m} DATA messages ({} bytes each on average) in {:.3} s",
            n(&bulk_down, "bytes"),
            n(&bulk_down, "bytes") / m,
            bulk_down["secs"].as_f64().unwrap_or(0.0)
        );
        // One message per QUIC packet (~1.4 KB) was what the server sent
        // before it gathered buffered chunks; now they average ~33 KB.
        assert!(
            n(&bulk_down, "bytes") / m >= 4096,
            "DATA messages of {} bytes on average: the edge's bytes are not gathered",
            n(&bulk_down, "bytes") / m
        );
    }
    assert_echoed(&bulk_up, BULK);
    // Failed dials: DIAL_RSP with an error naming the cause, then status OK.
    assert_eq!(n(&unknown, "random"), 5, "{unknown}");
    assert_eq!(n(&unknown, "connect_id"), 0, "{unknown}");
    assert!(
        s(&unknown, "error").contains("no agent is registered for 10.9.9.9"),
        "{unknown}"
    );
    assert_eq!(n(&unknown, "code"), 0, "{unknown}");
    assert_eq!(n(&refused_rsp, "random"), -6, "{refused_rsp}");
    let e = s(&refused_rsp, "error");
    assert!(
        e.contains("refused") && e.contains("edge-1"),
        "{refused_rsp}"
    );
    // One DATA message of exactly the 4 MiB limit up; more than 4 MiB down.
    assert_eq!(n(&big_up, "message_size") as u64, MAX_MESSAGE, "{big_up}");
    assert_echoed(&big_up, n(&big_up, "bytes") as usize);
    assert!(n(&big_up, "bytes") as u64 > MAX_MESSAGE - 64, "{big_up}");
    assert_downloaded(&big_dn, &big_down);
    // DIAL_CLS ends a pending dial's call at once, without a DIAL_RSP.
    assert_eq!(cls["ended"], Value::Bool(true), "{cls}");
    assert!(n(&cls, "ended_ms") < 1000, "{cls}");
    assert_eq!(cls["packets"], serde_json::json!([]), "{cls}");

    wait_streams_closed(&c, Duration::from_secs(2)).await;
    let m = c.server.metrics().unwrap();
    for (result, want) in [
        ("ok", 154.0),
        ("no_agent", 1.0),
        ("dial_failed", 1.0),
        ("cancelled", 1.0),
    ] {
        let sample =
            format!("tunnel_server_streams_total{{frontend=\"grpc\",result=\"{result}\"}}");
        assert_eq!(metric_value(&m, &sample), Some(want), "{sample}\n{m}");
    }

    // Killed mid-transfer (SIGKILL, data in flight both ways): the edge
    // stream is released within a second.
    let (mut child, mut out) = prog
        .spawn(Some(&ep), "hold", &[arg("target", endless)])
        .unwrap();
    let ev = next_event(&mut out, Duration::from_secs(20)).await.unwrap();
    assert_eq!(ev["event"], "receiving", "{ev}");
    assert_eq!(
        server_metric(&c, "tunnel_server_streams_active{frontend=\"grpc\"}"),
        1.0
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let took = wait_streams_closed(&c, Duration::from_secs(1)).await;
    eprintln!("{peer} (tls {tls}): killed client's stream released in {took:?}");

    let logs = c.server.proc.logs();
    assert!(!logs.contains("panicked"), "server panicked:\n{logs}");
    eprintln!("{peer} (tls {tls}): all cases in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_peer_over_the_unix_socket() {
    acceptance(Peer::Go, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_peer_over_mutual_tls() {
    acceptance(Peer::Go, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peer_over_the_unix_socket() {
    acceptance(Peer::Python, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_peer_over_mutual_tls() {
    acceptance(Peer::Python, true).await;
}

/// What the peers put on the wire, seen by a bare HTTP/2 listener: the
/// socket path as `:authority` (what kube-apiserver sends), the Proxy
/// method, plain `application/grpc`. This is what the server must accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_send_the_socket_path_as_authority() {
    let Some(go) = PeerProgram::for_test(Peer::Go) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for peer in [Peer::Go, Peer::Python] {
        let Some(client) = PeerProgram::for_test(peer) else {
            continue;
        };
        let sock = dir.path().join(format!("konnectivity-{peer:?}.socket"));
        let (mut capture, mut out) = go
            .spawn(None, "capture", &[arg("listen", sock.display())])
            .unwrap();
        let ev = next_event(&mut out, Duration::from_secs(10)).await.unwrap();
        assert_eq!(ev["event"], "listening", "{ev}");
        // The capture never answers the call, so the client fails; only
        // what it sent matters.
        let ep = Endpoint::Uds(sock.clone());
        let mut dial = client
            .command(Some(&ep), "dial", &[arg("target", "10.0.0.5:10250")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let got = next_event(&mut out, Duration::from_secs(20)).await.unwrap();
        let _ = dial.start_kill();
        let _ = capture.wait().await;
        let h = &got["headers"];
        eprintln!("{peer} sends {h}");
        assert_eq!(h[":authority"], sock.display().to_string(), "{peer}: {h}");
        assert_eq!(h[":path"], "/ProxyService/Proxy", "{peer}: {h}");
        assert_eq!(h[":method"], "POST", "{peer}: {h}");
        assert_eq!(h["content-type"], "application/grpc", "{peer}: {h}");
        assert_eq!(h["te"], "trailers", "{peer}: {h}");
    }
}
