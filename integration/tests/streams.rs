//! Tunnel-core stream behaviour through the real binaries on loopback:
//! `kubectl logs` (bulk and follow), `exec` (interactive, half-close) and
//! `port-forward` (many concurrent connections).

use std::time::{Duration, Instant};

use integration::services::{echo_server, line_server, pattern, sha256_hex, source_server};
use integration::{connect_uds, AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fields drop in order: processes first (their logs print on failure), then the directory.
struct Cluster {
    server: ServerProc,
    _agent: AgentProc,
    _dir: tempfile::TempDir,
}

/// A server with a UDS front end and one agent for node `edge-1` (127.0.0.1)
/// allowed to reach the given loopback ports.
fn cluster(ports: &[u16]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            ..Default::default()
        },
    )
    .unwrap();
    let agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &["127.0.0.1".parse().unwrap()],
        AgentOptions {
            allow: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            ..Default::default()
        },
    )
    .unwrap();
    server.wait_agents(1, Duration::from_secs(10)).unwrap();
    Cluster {
        _dir: dir,
        server,
        _agent: agent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_like_10mb_response_arrives_intact() {
    let data = pattern(10 * 1024 * 1024, 1);
    let want = sha256_hex(&data);
    let svc = source_server(data).await.unwrap();
    let c = cluster(&[svc.port()]);
    let uds = c.server.uds.clone().unwrap();
    let mut reply = connect_uds(&uds, &svc.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut got = Vec::new();
    reply.stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 10 * 1024 * 1024);
    assert_eq!(sha256_hex(&got), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_delivers_each_line_as_written() {
    let lines = 30;
    let interval = Duration::from_millis(50);
    let svc = line_server(lines, interval).await.unwrap();
    let c = cluster(&[svc.port()]);
    let uds = c.server.uds.clone().unwrap();
    let reply = connect_uds(&uds, &svc.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let start = Instant::now();
    let mut reader = tokio::io::BufReader::new(reply.stream);
    let mut worst = Duration::ZERO;
    for i in 0..lines {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line)
            .await
            .unwrap();
        assert_eq!(line, format!("line {i}\n"));
        // Line i is written at ~i*interval after the connection opened; the
        // first line marks time zero for the service's schedule.
        let expected = interval * i as u32;
        let late = start.elapsed().saturating_sub(expected);
        worst = worst.max(late);
        assert!(
            late <= Duration::from_millis(100),
            "line {i} arrived {late:?} after it was written"
        );
    }
    eprintln!("follow: worst per-line delay {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_like_interactive_echo_then_half_close_keeps_output() {
    let svc = echo_server().await.unwrap();
    let c = cluster(&[svc.port()]);
    let uds = c.server.uds.clone().unwrap();
    let reply = connect_uds(&uds, &svc.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (mut rd, mut wr) = tokio::io::split(reply.stream);
    for i in 0..20 {
        let cmd = format!("echo {i}\n");
        wr.write_all(cmd.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; cmd.len()];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut buf))
            .await
            .expect("echo within 5s")
            .unwrap();
        assert_eq!(buf, cmd.as_bytes());
    }
    // Send a last burst and half-close at once: the output still arrives, then EOF.
    let tail = pattern(256 * 1024, 7);
    wr.write_all(&tail).await.unwrap();
    wr.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got))
        .await
        .expect("EOF after half-close")
        .unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&tail));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_like_200_concurrent_connections_1mb_each() {
    let svc = echo_server().await.unwrap();
    let c = cluster(&[svc.port()]);
    let uds = c.server.uds.clone().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    // Eight distinct payloads, so a stream mixed up with another is caught.
    let payloads: Vec<std::sync::Arc<Vec<u8>>> = (0..8)
        .map(|i| std::sync::Arc::new(pattern(1024 * 1024, i + 100)))
        .collect();
    for i in 0..200usize {
        let uds = uds.clone();
        let target = svc.to_string();
        let data = payloads[i % payloads.len()].clone();
        tasks.spawn(async move {
            let reply = connect_uds(&uds, &target).await.unwrap();
            assert_eq!(reply.status, 200, "connection {i}: {}", reply.body);
            let (mut rd, mut wr) = tokio::io::split(reply.stream);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                wr.write_all(&sent).await.unwrap();
                wr.shutdown().await.unwrap();
            });
            let mut got = Vec::with_capacity(data.len());
            rd.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got.len(), data.len(), "connection {i}");
            assert!(got == *data, "connection {i}: echoed bytes differ");
        });
    }
    let started = Instant::now();
    let deadline = Duration::from_secs(120);
    while let Some(r) = tokio::time::timeout(deadline, tasks.join_next())
        .await
        .expect("200 connections finish in time")
    {
        r.unwrap();
    }
    eprintln!("200 x 1 MB echoed in {:?}", started.elapsed());
    let m = c.server.metrics().unwrap();
    assert_eq!(
        integration::process::metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"connect\",result=\"ok\"}"
        ),
        Some(200.0),
        "{m}"
    );
}
