//! Hostile and broken input: garbage, truncated requests, thousands of idle
//! connections on the front end and on the agent port. The server must keep
//! serving with bounded memory and never panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::process::{raise_fd_limit, rss_kib};
use integration::services::echo_server;
use integration::{connect_uds, Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IDLE: usize = 5000;

/// A cluster with both front ends and an echo service the agent may reach.
struct Setup {
    cluster: Cluster,
    echo: SocketAddr,
}

impl std::ops::Deref for Setup {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

async fn setup(args: &[&str]) -> Setup {
    raise_fd_limit();
    let echo = echo_server().await.unwrap();
    let mut opts = ClusterOptions::allowing(&[echo.to_string()], &[]).server_args(args);
    opts.server.proxy = true;
    Setup {
        cluster: Cluster::start(opts),
        echo,
    }
}

/// A full CONNECT + echo round trip still works.
async fn still_serves(s: &Setup) {
    let mut r = tokio::time::timeout(
        Duration::from_secs(5),
        connect_uds(s.server.uds.as_ref().unwrap(), &s.echo.to_string()),
    )
    .await
    .expect("CONNECT answered within 5s")
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.stream.write_all(b"alive").await.unwrap();
    let mut buf = [0u8; 5];
    r.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"alive");
}

fn assert_no_panic(s: &Setup) {
    let logs = s.server.proc.logs();
    assert!(!logs.contains("panicked"), "server panicked:\n{logs}");
}

fn server_rss(s: &Setup) -> u64 {
    rss_kib(s.server.proc.pid().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_requests_on_the_front_end() {
    let s = setup(&["--header-timeout=2s"]).await;
    let uds = s.server.uds.clone().unwrap();
    let inputs: Vec<Vec<u8>> = vec![
        vec![0u8; 4096],
        (0..=255u8).cycle().take(10_000).collect(),
        b"CONNECT 127.0.0.1:".to_vec(),
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        "CONNECT ☃:80 HTTP/1.1\r\n\r\n".as_bytes().to_vec(),
    ];
    for input in &inputs {
        for close_early in [false, true] {
            let mut sock = tokio::net::UnixStream::connect(&uds).await.unwrap();
            let _ = sock.write_all(input).await;
            if close_early {
                drop(sock);
                continue;
            }
            let _ = sock.shutdown().await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
            // The HTTP/2 preface is served as gRPC: the answer is HTTP/2 frames.
            if !out.is_empty() && !input.starts_with(b"PRI * HTTP/2.0") {
                let text = String::from_utf8_lossy(&out);
                assert!(text.starts_with("HTTP/1.1 4"), "unexpected answer {text:?}");
            }
        }
    }
    // The TLS port gets garbage instead of a ClientHello.
    let mut tcp = tokio::net::TcpStream::connect(s.server.proxy_addr.unwrap())
        .await
        .unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    still_serves(&s).await;
    assert_no_panic(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_front_end_connections() {
    let s = setup(&["--header-timeout=3s"]).await;
    let before = server_rss(&s);
    let uds = s.server.uds.clone().unwrap();
    let mut idle_uds = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle_uds.push(tokio::net::UnixStream::connect(&uds).await.unwrap());
    }
    let proxy = s.server.proxy_addr.unwrap();
    let mut idle_tcp = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle_tcp.push(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = server_rss(&s);
    still_serves(&s).await;
    eprintln!(
        "server RSS: {before} KiB before, {during} KiB with {} idle front-end connections (+{} B each)",
        2 * IDLE,
        (during.saturating_sub(before)) * 1024 / (2 * IDLE as u64)
    );
    assert!(
        during < before + 200 * 1024,
        "server grew by {} KiB for idle connections",
        during - before
    );
    // The header timeout closes them all: UDS ones get a 408, TLS ones are dropped.
    let started = Instant::now();
    let mut answered = 0;
    for mut sock in idle_uds {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "idle connection not closed by the server");
        if out.starts_with(b"HTTP/1.1 408") {
            answered += 1;
        }
    }
    for mut sock in idle_tcp {
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "idle TLS connection not closed by the server");
    }
    assert_eq!(answered, IDLE);
    eprintln!(
        "all idle connections closed {:?} after the check",
        started.elapsed()
    );
    still_serves(&s).await;
    assert_no_panic(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_idle_connections_on_the_agent_port() {
    // Every one of them may hold a handshake slot, without Retry (the default
    // budget of 512 would refuse the rest at once: tests/storm.rs).
    let s = setup(&["--max-pending-handshakes=20000"]).await;
    let before = server_rss(&s);
    let agent_addr = s.server.agent_addr;

    // 5000 sources each sending junk: random bytes, a truncated QUIC long
    // header, a short header for an unknown connection.
    let mut socks = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let junk: Vec<u8> = match i % 3 {
            0 => (0..1200).map(|j| (j * 7 + i) as u8).collect(),
            1 => vec![0xc0, 0, 0, 0, 1, 8, 1, 2, 3, 4],
            _ => vec![0x40; 40],
        };
        let _ = sock.send_to(&junk, agent_addr).await;
        socks.push(sock);
    }

    // 5000 QUIC connections with a valid agent certificate that complete
    // the handshake and then never say hello.
    let tls = s
        .pki
        .agent_client_tls(
            "idle-node",
            &["127.0.0.1".parse().unwrap()],
            proto::ALPN_QUIC,
        )
        .unwrap();
    let tuning = transport::quic::QuicTuning::default();
    let mut endpoints = Vec::new();
    let mut conns = Vec::with_capacity(IDLE);
    let started = Instant::now();
    for chunk in 0..(IDLE / 500) {
        let ep = transport::quic::client_endpoint(agent_addr, tls.clone(), &tuning).unwrap();
        let mut pending = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let connecting = ep.connect(agent_addr, "localhost").unwrap();
            pending.spawn(connecting);
        }
        while let Some(r) = pending.join_next().await {
            conns.push(
                r.unwrap()
                    .unwrap_or_else(|e| panic!("chunk {chunk}: handshake failed: {e}")),
            );
        }
        endpoints.push(ep);
    }
    eprintln!(
        "{} idle QUIC connections established in {:?}",
        conns.len(),
        started.elapsed()
    );
    let during = server_rss(&s);
    still_serves(&s).await;
    eprintln!(
        "server RSS: {before} KiB before, {during} KiB with {IDLE} idle QUIC connections (+{} B each)",
        (during.saturating_sub(before)) * 1024 / IDLE as u64
    );
    assert!(
        during < before + 400 * 1024,
        "server grew by {} KiB",
        during - before
    );
    // None of them registered, and the server closes them for not saying hello.
    let agents = s.server.agents().unwrap();
    assert_eq!(agents.as_array().map(|a| a.len()), Some(1), "{agents}");
    let conns = Arc::new(conns);
    let deadline = Instant::now() + Duration::from_secs(25);
    for c in conns.iter() {
        let left = deadline.saturating_duration_since(Instant::now());
        let closed = tokio::time::timeout(left, c.closed()).await;
        assert!(
            closed.is_ok(),
            "idle QUIC connection still open after the hello timeout"
        );
    }
    still_serves(&s).await;
    assert_no_panic(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_tcp_connections_on_the_agent_port() {
    // The agent port also listens on TCP for the WebSocket transport.
    let s = setup(&[]).await;
    let before = server_rss(&s);
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(
            tokio::net::TcpStream::connect(s.server.agent_addr)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = server_rss(&s);
    still_serves(&s).await;
    eprintln!(
        "server RSS: {before} KiB before, {during} KiB with {IDLE} idle TCP connections on the agent port (+{} B each)",
        during.saturating_sub(before) * 1024 / IDLE as u64
    );
    assert!(
        during < before + 200 * 1024,
        "server grew by {} KiB",
        during - before
    );
    // The upgrade timeout (10 s) closes every one of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for mut sock in idle {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut out = Vec::new();
        let r = tokio::time::timeout(left, sock.read_to_end(&mut out)).await;
        assert!(
            r.is_ok(),
            "idle agent-port connection not closed by the server"
        );
    }
    still_serves(&s).await;
    assert_no_panic(&s);
}
