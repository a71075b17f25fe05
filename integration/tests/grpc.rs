//! The Konnectivity gRPC front end through the real binaries, driven by a
//! client written from the proto (prost + h2), as kube-apiserver's
//! `proxyProtocol: GRPC` egress selector uses it: one connection and one
//! call per dial.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration::grpc::{self, close_req, data, dial_cls, type_of, Call, PacketType, Payload};
use integration::process::metric_value;
use integration::services::{
    echo_server, hanging_server, line_server, pattern, sha256_hex, source_server,
};
use integration::{Cluster, ClusterOptions};

/// A cluster whose agent may dial `allow`; derefs to [`Cluster`].
struct Setup(Cluster);

impl std::ops::Deref for Setup {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

fn setup(args: &[&str], allow: &[String]) -> Setup {
    let mut opts = ClusterOptions::allowing(allow, &[]).server_args(args);
    opts.server.proxy = true;
    Setup(Cluster::start(opts))
}

impl Setup {
    async fn call(&self) -> Call {
        Call::uds(self.server.uds.as_ref().unwrap()).await.unwrap()
    }

    fn server_metric(&self, sample: &str) -> f64 {
        metric_value(&self.server.metrics().unwrap(), sample).unwrap_or(0.0)
    }

    fn agent_metric(&self, sample: &str) -> f64 {
        metric_value(&self.agent().metrics().unwrap(), sample).unwrap_or(0.0)
    }

    /// Waits until both ends report no open stream; returns how long it took.
    async fn streams_drain(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let server = self.server_metric("tunnel_server_streams_active{frontend=\"grpc\"}");
            let agent = self.agent_metric("tunnel_agent_streams_active");
            if server == 0.0 && agent == 0.0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "streams still open after {limit:?}: server {server}, agent {agent}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_no_panic(&self) {
        let logs = self.server.proc.logs();
        assert!(!logs.contains("panicked"), "server panicked:\n{logs}");
    }
}

/// Dial, one echo round trip, CLOSE_REQ → CLOSE_RSP, status OK.
async fn echo_once(mut call: Call, echo: SocketAddr, random: i64) -> i64 {
    let rsp = call.dial(&echo.to_string(), random).await.unwrap();
    assert_eq!(rsp.error, "", "dial failed");
    assert_eq!(rsp.random, random);
    assert_ne!(rsp.connect_id, 0);
    let c = rsp.connect_id;
    let msg = Bytes::from(format!("ping {random}"));
    call.tx.send(&data(c, msg.clone())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < msg.len() {
        let p = call.rx.recv().await.unwrap().expect("echoed DATA");
        match p.payload {
            Some(Payload::Data(d)) => {
                assert_eq!(d.connect_id, c);
                got.extend_from_slice(&d.data);
            }
            other => panic!("expected DATA, got {other:?}"),
        }
    }
    assert_eq!(got, msg);
    call.tx.send(&close_req(c)).await.unwrap();
    let p = call.rx.recv().await.unwrap().expect("CLOSE_RSP");
    assert_eq!(type_of(&p), Some(PacketType::CloseRsp), "{p:?}");
    match p.payload {
        Some(Payload::CloseResponse(r)) => assert_eq!(r.connect_id, c),
        other => panic!("expected CLOSE_RSP, got {other:?}"),
    }
    assert!(call.rx.recv().await.unwrap().is_none());
    assert_eq!(call.rx.status.as_ref().map(|s| s.code), Some(0));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_and_concurrent_dials() {
    let echo = echo_server().await.unwrap();
    let s = setup(&[], &[echo.to_string()]);
    let mut ids = std::collections::HashSet::new();
    for i in 0..100 {
        // Old Go clients may send the same random from every process.
        let random = if i % 2 == 0 { 42 } else { -(i as i64) };
        ids.insert(echo_once(s.call().await, echo, random).await);
    }
    let uds = s.server.uds.clone().unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let uds = uds.clone();
        tasks.push(tokio::spawn(async move {
            let call = Call::uds(&uds).await.unwrap();
            echo_once(call, echo, i64::MIN + i).await
        }));
    }
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 150, "connectIDs are unique");
    s.streams_drain(Duration::from_secs(2)).await;
    let m = s.server.metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"grpc\",result=\"ok\"}"
        ),
        Some(150.0),
        "{m}"
    );
    assert_eq!(
        metric_value(
            &m,
            "tunnel_server_frontend_requests_total{code=\"0\",protocol=\"grpc\"}"
        ),
        Some(150.0),
        "{m}"
    );
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_down_and_up_intact() {
    const SIZE: usize = 20 * 1024 * 1024;
    let down = pattern(SIZE, 7);
    let want_down = sha256_hex(&down);
    let source = source_server(down).await.unwrap();
    let echo = echo_server().await.unwrap();
    let s = setup(&[], &[source.to_string(), echo.to_string()]);

    // Download: DATA until the edge closes (CLOSE_RSP).
    let mut call = s.call().await;
    let rsp = call.dial(&source.to_string(), 1).await.unwrap();
    assert_eq!(rsp.error, "");
    let mut got = Vec::with_capacity(SIZE);
    loop {
        let p = call.rx.recv().await.unwrap().expect("packet");
        match p.payload {
            Some(Payload::Data(d)) => got.extend_from_slice(&d.data),
            Some(Payload::CloseResponse(r)) => {
                assert_eq!(r.connect_id, rsp.connect_id);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), SIZE);
    assert_eq!(sha256_hex(&got), want_down);
    assert!(
        call.rx.largest_message <= 64 * 1024,
        "largest DATA message {} bytes",
        call.rx.largest_message
    );
    drop(call);

    // Upload through echo, reading the echo concurrently.
    let up = Arc::new(pattern(SIZE, 8));
    let want_up = sha256_hex(&up);
    let mut call = s.call().await;
    let rsp = call.dial(&echo.to_string(), 2).await.unwrap();
    assert_eq!(rsp.error, "");
    let c = rsp.connect_id;
    let Call {
        mut tx,
        mut rx,
        conn: _conn,
    } = call;
    let sender = {
        let up = up.clone();
        tokio::spawn(async move {
            for chunk in up.chunks(32 * 1024) {
                tx.send(&data(c, Bytes::copy_from_slice(chunk)))
                    .await
                    .unwrap();
            }
            tx
        })
    };
    let started = Instant::now();
    let mut echoed = Vec::with_capacity(SIZE);
    while echoed.len() < SIZE {
        match rx.recv().await.unwrap().expect("echo").payload {
            Some(Payload::Data(d)) => echoed.extend_from_slice(&d.data),
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = started.elapsed();
    let mut tx = sender.await.unwrap();
    assert_eq!(sha256_hex(&echoed), want_up);
    tx.send(&close_req(c)).await.unwrap();
    let p = rx.recv().await.unwrap().expect("CLOSE_RSP");
    assert_eq!(type_of(&p), Some(PacketType::CloseRsp));
    eprintln!(
        "20 MiB echoed through gRPC in {took:?} ({:.0} MiB/s each way)",
        20.0 / took.as_secs_f64()
    );
    let m = s.server.metrics().unwrap();
    assert!(
        metric_value(&m, "tunnel_server_bytes_total{direction=\"to_edge\"}").unwrap_or(0.0)
            >= SIZE as f64,
        "{m}"
    );
    s.streams_drain(Duration::from_secs(2)).await;
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dials_answer_dial_rsp_with_an_error_naming_the_cause() {
    let s = setup(&[], &["127.0.0.1:1".to_string()]);
    let mut call = s.call().await;
    let rsp = call.dial("10.9.9.9:10250", 5).await.unwrap();
    assert_eq!(rsp.random, 5);
    assert_eq!(rsp.connect_id, 0);
    assert!(
        rsp.error.contains("no agent is registered for 10.9.9.9"),
        "{}",
        rsp.error
    );
    assert!(call.rx.recv().await.unwrap().is_none(), "the call ends");
    assert_eq!(call.rx.status.as_ref().map(|s| s.code), Some(0));

    let mut call = s.call().await;
    let rsp = call.dial("127.0.0.1:1", 6).await.unwrap();
    assert!(rsp.error.contains("refused"), "{}", rsp.error);
    assert!(rsp.error.contains("edge-1"), "{}", rsp.error);

    let mut call = s.call().await;
    let rsp = call.dial("127.0.0.1:10250", 7).await.unwrap();
    assert!(rsp.error.contains("--allow"), "{}", rsp.error);

    let mut call = s.call().await;
    let rsp = call.dial("no-port", 8).await.unwrap();
    assert!(rsp.error.contains("bad address"), "{}", rsp.error);

    let m = s.server.metrics().unwrap();
    for (result, n) in [
        ("no_agent", 1.0),
        ("dial_failed", 1.0),
        ("not_allowed", 1.0),
    ] {
        assert_eq!(
            metric_value(
                &m,
                &format!("tunnel_server_streams_total{{frontend=\"grpc\",result=\"{result}\"}}")
            ),
            Some(n),
            "{m}"
        );
    }
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_cls_cancels_a_pending_dial_and_frees_its_slot() {
    let (hang, _guard) = hanging_server().await.unwrap();
    let echo = echo_server().await.unwrap();
    let s = setup(
        &["--max-pending-dials=1", "--dial-timeout=30s"],
        &[hang.to_string(), echo.to_string()],
    );
    let mut call = s.call().await;
    call.tx
        .send(&grpc::dial_req(&hang.to_string(), 99))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A DIAL_CLS for another random is not ours: the dial stays pending.
    call.tx.send(&dial_cls(98)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut other = s.call().await;
    let rsp = other.dial(&echo.to_string(), 1).await.unwrap();
    assert!(rsp.error.contains("pending dials"), "{}", rsp.error);

    let started = Instant::now();
    call.tx.send(&dial_cls(99)).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(2), call.rx.recv())
        .await
        .expect("the call ends after DIAL_CLS")
        .unwrap();
    assert!(end.is_none(), "no DIAL_RSP after DIAL_CLS: {end:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The pending slot is free again at once.
    echo_once(s.call().await, echo, 3).await;

    // An old client (no DIAL_CLS) simply goes away: the slot is freed too.
    let mut old = s.call().await;
    old.tx
        .send(&grpc::dial_req(&hang.to_string(), 42))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    echo_once(s.call().await, echo, 4).await;
    let m = s.server.metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"grpc\",result=\"cancelled\"}"
        ),
        Some(2.0),
        "{m}"
    );
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_releases_its_edge_stream_within_a_second() {
    let big = source_server(pattern(50 * 1024 * 1024, 3)).await.unwrap();
    let lines = line_server(100_000, Duration::from_millis(10))
        .await
        .unwrap();
    let s = setup(&[], &[big.to_string(), lines.to_string()]);

    // Killed mid-download: the socket closes with data in flight both ways.
    for (target, by_reset) in [(big, false), (lines, false), (big, true)] {
        let mut call = s.call().await;
        let rsp = call.dial(&target.to_string(), 1).await.unwrap();
        assert_eq!(rsp.error, "");
        call.tx
            .send(&data(rsp.connect_id, Bytes::from_static(b"hello")))
            .await
            .unwrap();
        let mut n = 0;
        while n < 3 {
            if let Some(Payload::Data(_)) = call.rx.recv().await.unwrap().unwrap().payload {
                n += 1;
            }
        }
        assert_eq!(
            s.server_metric("tunnel_server_streams_active{frontend=\"grpc\"}"),
            1.0
        );
        if by_reset {
            // A cancelled Go context: RST_STREAM, connection kept.
            call.tx.reset();
            let took = s.streams_drain(Duration::from_secs(1)).await;
            eprintln!("stream reset: edge stream released in {took:?}");
            drop(call);
        } else {
            drop(call);
            let took = s.streams_drain(Duration::from_secs(1)).await;
            eprintln!("client gone ({target}): edge streams released in {took:?}");
        }
    }
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_input_gets_clean_errors_and_spares_other_calls() {
    let echo = echo_server().await.unwrap();
    let s = setup(&[], &[echo.to_string()]);
    // A call that stays open across all the bad input.
    let mut live = s.call().await;
    let rsp = live.dial(&echo.to_string(), 1).await.unwrap();
    assert_eq!(rsp.error, "");
    let c = rsp.connect_id;

    // Malformed Packet bytes in a valid gRPC frame.
    let mut call = s.call().await;
    call.tx
        .send_raw(Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 0xff, 0xff]))
        .await
        .unwrap();
    assert!(call.rx.recv().await.unwrap().is_none());
    let st = call.rx.status.clone().unwrap();
    assert_eq!(st.code, 13, "{st:?}");
    assert!(st.message.contains("malformed"), "{st:?}");

    // Oversized message: 64 MiB announced.
    let mut call = s.call().await;
    call.tx
        .send_raw(Bytes::from_static(&[0, 4, 0, 0, 0, 1, 2, 3]))
        .await
        .unwrap();
    assert!(call.rx.recv().await.unwrap().is_none());
    assert_eq!(call.rx.status.as_ref().unwrap().code, 8);

    // Compressed flag without negotiated compression.
    let mut call = s.call().await;
    call.tx
        .send_raw(Bytes::from_static(&[1, 0, 0, 0, 1, 0]))
        .await
        .unwrap();
    assert!(call.rx.recv().await.unwrap().is_none());
    assert_eq!(call.rx.status.as_ref().unwrap().code, 13);

    // Unknown packet types (and DRAIN) are ignored, before and after the dial.
    let mut call = s.call().await;
    let unknown = grpc::Packet {
        r#type: 9,
        payload: None,
    };
    call.tx.send(&unknown).await.unwrap();
    let rsp = call.dial(&echo.to_string(), 2).await.unwrap();
    assert_eq!(rsp.error, "");
    call.tx.send(&unknown).await.unwrap();
    call.tx
        .send(&grpc::Packet {
            r#type: PacketType::Drain as i32,
            payload: Some(Payload::Drain(grpc::Drain {})),
        })
        .await
        .unwrap();
    call.tx
        .send(&data(rsp.connect_id, Bytes::from_static(b"ok")))
        .await
        .unwrap();
    match call.rx.recv().await.unwrap().unwrap().payload {
        Some(Payload::Data(d)) => assert_eq!(&d.data[..], b"ok"),
        other => panic!("unexpected {other:?}"),
    }

    // Unknown gRPC method: UNIMPLEMENTED.
    let sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    let mut call = Call::open(
        sock,
        "/grpc.health.v1.Health/Check",
        Some("application/grpc"),
    )
    .await
    .unwrap();
    assert!(call.rx.recv().await.unwrap().is_none());
    assert_eq!(call.rx.status.as_ref().unwrap().code, 12);

    // Not gRPC at all: an HTTP status with a text body.
    let sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    let mut call = Call::open(sock, "/", None).await.unwrap();
    let body = call.rx.text_body().await.unwrap();
    assert_eq!(call.rx.http_status, Some(415), "{body}");
    assert!(body.contains("gRPC"), "{body}");

    // The call that was open all along still works.
    live.tx
        .send(&data(c, Bytes::from_static(b"still here")))
        .await
        .unwrap();
    match live.rx.recv().await.unwrap().unwrap().payload {
        Some(Payload::Data(d)) => assert_eq!(&d.data[..], b"still here"),
        other => panic!("unexpected {other:?}"),
    }
    let m = s.server.metrics().unwrap();
    for sample in [
        "tunnel_server_frontend_requests_total{code=\"13\",protocol=\"grpc\"} 2",
        "tunnel_server_frontend_requests_total{code=\"8\",protocol=\"grpc\"} 1",
        "tunnel_server_frontend_requests_total{code=\"12\",protocol=\"grpc\"} 1",
        "tunnel_server_frontend_requests_total{code=\"415\",protocol=\"http2\"} 1",
    ] {
        assert!(m.contains(sample), "{sample}\n{m}");
    }
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_mutual_tls_negotiates_h2() {
    let echo = echo_server().await.unwrap();
    let s = setup(&[], &[echo.to_string()]);
    let ca = s.pki.path("ca.crt");
    let roots = certs::load_root_store(&ca).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            certs::load_cert_chain(&s.pki.path("proxy-client.crt")).unwrap(),
            certs::load_private_key(&s.pki.path("proxy-client.key")).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(s.server.proxy_addr.unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let call = Call::open(tls, grpc::PROXY_PATH, Some("application/grpc"))
        .await
        .unwrap();
    echo_once(call, echo, 11).await;

    // Without a client certificate the call is refused: PERMISSION_DENIED.
    let anon = integration::client::proxy_tls(&ca, None).unwrap();
    let tcp = tokio::net::TcpStream::connect(s.server.proxy_addr.unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = anon.connect(name, tcp).await.unwrap();
    let mut call = Call::open(tls, grpc::PROXY_PATH, Some("application/grpc"))
        .await
        .unwrap();
    assert!(call.rx.recv().await.unwrap().is_none());
    let st = call.rx.status.clone().unwrap();
    assert_eq!(st.code, 7, "{st:?}");
    assert!(st.message.contains("client certificate"), "{st:?}");
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_back_the_edge() {
    const SIZE: usize = 50 * 1024 * 1024;
    let data_src = pattern(SIZE, 5);
    let want = sha256_hex(&data_src);
    let source = source_server(data_src).await.unwrap();
    let s = setup(&[], &[source.to_string()]);
    let mut call = s.call().await;
    let rsp = call.dial(&source.to_string(), 1).await.unwrap();
    assert_eq!(rsp.error, "");
    // Read nothing for a while: only HTTP/2 windows' worth may leave the tunnel.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pulled = s.server_metric("tunnel_server_bytes_total{direction=\"from_edge\"}");
    eprintln!("stalled client: {pulled} bytes read from the tunnel");
    assert!(
        pulled < 1024.0 * 1024.0,
        "{pulled} bytes taken from the tunnel for a client that reads nothing"
    );
    // Then everything still arrives intact.
    let mut got = Vec::with_capacity(SIZE);
    loop {
        match call.rx.recv().await.unwrap().expect("packet").payload {
            Some(Payload::Data(d)) => got.extend_from_slice(&d.data),
            Some(Payload::CloseResponse(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sha256_hex(&got), want);
    s.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = echo_server().await.unwrap();
    let s = setup(&["--header-timeout=1s"], &[echo.to_string()]);
    // Preface and SETTINGS, then nothing: closed after about 1 s.
    let mut sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut sink))
        .await
        .expect("idle connection closed")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A call that lasts longer than the timeout is not cut.
    let mut call = s.call().await;
    let rsp = call.dial(&echo.to_string(), 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    call.tx
        .send(&data(rsp.connect_id, Bytes::from_static(b"late")))
        .await
        .unwrap();
    match call.rx.recv().await.unwrap().unwrap().payload {
        Some(Payload::Data(d)) => assert_eq!(&d.data[..], b"late"),
        other => panic!("unexpected {other:?}"),
    }
    s.assert_no_panic();
}
