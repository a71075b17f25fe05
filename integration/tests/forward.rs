//! `--forward LISTEN=NODE/HOST:PORT` through the real binaries: bulk traffic
//! to an edge echo service, the agent's allowlist refusing a destination,
//! and SIGHUP adding and removing forwards while traffic flows.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::process::free_port;
use integration::services::{echo_server, pattern};
use integration::{AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNS: usize = 100;
const BYTES: usize = 1024 * 1024;

fn write_config(path: &Path, forwards: &[String]) {
    let mut text = String::from("forward:\n");
    for f in forwards {
        text.push_str(&format!("  - \"{f}\"\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Sends `data`, half-closes, reads everything back; true when intact.
async fn echo_roundtrip(to: SocketAddr, data: Arc<Vec<u8>>) -> anyhow::Result<bool> {
    echo_on(TcpStream::connect(to).await?, data).await
}

/// [`echo_roundtrip`] on a connection that is already open.
async fn echo_on(mut s: TcpStream, data: Arc<Vec<u8>>) -> anyhow::Result<bool> {
    let (mut rd, mut wr) = s.split();
    let send = async {
        wr.write_all(&data).await?;
        wr.shutdown().await
    };
    let mut back = Vec::with_capacity(data.len());
    let recv = rd.read_to_end(&mut back);
    let (a, b) = tokio::join!(send, recv);
    a?;
    b?;
    Ok(back == *data)
}

/// Polls until a connect to `addr` succeeds (`want`) or is refused (`!want`).
async fn wait_listening(addr: SocketAddr, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = TcpStream::connect(addr).await.is_ok();
        if up == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} listening={up}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_carry_traffic_refuse_disallowed_and_reload_on_sighup() {
    let echo = echo_server().await.unwrap();
    let not_allowed = echo_server().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let f1 = format!("127.0.0.1:{p1}=edge-1/{echo}");
    let f2 = format!("{p2}=edge-1/{not_allowed}");
    let f3 = format!("127.0.0.1:{p3}=edge-1/{echo}");
    let config = dir.path().join("server.yaml");
    write_config(&config, &[f1.clone(), f2.clone()]);
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            args: vec![format!("--config={}", config.display())],
            ..Default::default()
        },
    )
    .unwrap();
    let mut agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &["127.0.0.1".parse().unwrap()],
        AgentOptions {
            allow: vec![echo.to_string()],
            ..Default::default()
        },
    )
    .unwrap();
    server.wait_agents(1, Duration::from_secs(10)).unwrap();
    let a1: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let a2: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    let a3: SocketAddr = format!("127.0.0.1:{p3}").parse().unwrap();

    // 100 concurrent connections of 1 MiB each, intact.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        let data = Arc::new(pattern(BYTES, i as u64));
        tasks.spawn(async move { echo_roundtrip(a1, data).await });
    }
    let mut intact = 0;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(120), tasks.join_next())
        .await
        .expect("all connections finish within 120 s")
    {
        if r.unwrap().unwrap() {
            intact += 1;
        }
    }
    let took = started.elapsed();
    assert_eq!(intact, CONNS);
    eprintln!(
        "forward: {CONNS} x 1 MiB echoed in {took:?} ({:.0} MiB/s each way)",
        CONNS as f64 / took.as_secs_f64()
    );

    // The agent refuses the second forward's destination: the client sees
    // its connection closed without data, the server log names the reason.
    let mut s = TcpStream::connect(a2).await.unwrap();
    let _ = s.write_all(b"hello").await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed within 10 s");
    assert!(r.is_err() || buf.is_empty(), "got data: {buf:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = server.proc.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("forward dial failed") && l.contains(&not_allowed.to_string()));
        if let Some(line) = line {
            assert!(line.contains("not_allowed"), "{line}");
            assert!(line.contains("refused"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no log line:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGHUP while a connection on the first forward is open: f1 and f2 are
    // removed, f3 is added; the open connection keeps working.
    let mut open = TcpStream::connect(a1).await.unwrap();
    open.write_all(b"before ").await.unwrap();
    let mut got = [0u8; 7];
    open.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"before ");
    let flowing = {
        let data = Arc::new(pattern(8 * BYTES, 99));
        let mut conn = TcpStream::connect(a1).await.unwrap();
        // One echoed byte proves the server accepted it before the reload.
        conn.write_all(b"x").await.unwrap();
        conn.read_exact(&mut [0u8; 1]).await.unwrap();
        tokio::spawn(async move { echo_on(conn, data).await })
    };
    write_config(&config, std::slice::from_ref(&f3));
    server.proc.signal(Signal::SIGHUP);
    wait_listening(a3, true).await;
    wait_listening(a1, false).await;
    wait_listening(a2, false).await;
    open.write_all(b"after").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), open.read_exact(&mut got))
        .await
        .expect("open connection still echoes")
        .unwrap();
    assert_eq!(&got, b"after");
    assert!(
        flowing.await.unwrap().unwrap(),
        "transfer during SIGHUP was corrupted"
    );
    assert!(echo_roundtrip(a3, Arc::new(pattern(BYTES, 5)))
        .await
        .unwrap());

    // SIGHUP back: f1 returns on the same port, f3 goes.
    write_config(&config, std::slice::from_ref(&f1));
    server.proc.signal(Signal::SIGHUP);
    wait_listening(a1, true).await;
    wait_listening(a3, false).await;
    assert!(echo_roundtrip(a1, Arc::new(pattern(BYTES, 6)))
        .await
        .unwrap());

    // A broken config is refused and the running forwards stay.
    std::fs::write(&config, "forward: [\"nonsense\"]\n").unwrap();
    server.proc.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.proc.logs().contains("SIGHUP: configuration invalid") {
        assert!(Instant::now() < deadline, "{}", server.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(echo_roundtrip(a1, Arc::new(pattern(1000, 8)))
        .await
        .unwrap());
    drop(open);

    let m = server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_streams_total{frontend=\"forward\",result=\"not_allowed\"} 1"),
        "{m}"
    );
    let to_edge = integration::process::metric_value(
        &m,
        "tunnel_server_node_bytes_total{direction=\"to_edge\",node=\"edge-1\"}",
    )
    .unwrap_or(0.0);
    assert!(to_edge >= (CONNS * BYTES) as f64, "{m}");

    // The node's series go away with the node.
    agent.proc.stop(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = server.metrics().unwrap();
        if !m.contains("node=\"edge-1\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "series of a gone node remain:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
