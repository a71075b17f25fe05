//! The tunnel-core stream scenarios, as functions, so the same assertions
//! run over every transport and topology: `kubectl logs` (bulk, follow),
//! `exec` (interactive, half-close) and `port-forward` (many streams).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::client::connect_uds;
use crate::services::{pattern, sha256_hex};

/// Reads a whole response from `target` (a source of `want`) and compares checksums.
pub async fn logs_bulk(uds: &Path, target: SocketAddr, want: &[u8]) {
    let mut reply = connect_uds(uds, &target.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut got = Vec::with_capacity(want.len());
    reply.stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), want.len());
    assert_eq!(sha256_hex(&got), sha256_hex(want));
}

/// Reads `lines` lines written every `interval` by a line server; each must
/// arrive within 100 ms of its schedule. Returns the worst delay.
pub async fn logs_follow(
    uds: &Path,
    target: SocketAddr,
    lines: usize,
    interval: Duration,
) -> Duration {
    let reply = connect_uds(uds, &target.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let start = Instant::now();
    let mut reader = tokio::io::BufReader::new(reply.stream);
    let mut worst = Duration::ZERO;
    for i in 0..lines {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(line, format!("line {i}\n"));
        // Line i is written at ~i*interval after the connection opened.
        let late = start.elapsed().saturating_sub(interval * i as u32);
        worst = worst.max(late);
        assert!(
            late <= Duration::from_millis(100),
            "line {i} arrived {late:?} after it was written"
        );
    }
    worst
}

/// Interactive echo, then half-close: the remaining output still arrives, then EOF.
pub async fn exec_half_close(uds: &Path, echo: SocketAddr) {
    let reply = connect_uds(uds, &echo.to_string()).await.unwrap();
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

/// `count` concurrent connections echoing `size` bytes each, all intact.
pub async fn port_forward(uds: &Path, echo: SocketAddr, count: usize, size: usize) -> Duration {
    let mut tasks = tokio::task::JoinSet::new();
    // Eight distinct payloads, so a stream mixed up with another is caught.
    let payloads: Vec<Arc<Vec<u8>>> = (0..8).map(|i| Arc::new(pattern(size, i + 100))).collect();
    let started = Instant::now();
    for i in 0..count {
        let uds = uds.to_path_buf();
        let data = payloads[i % payloads.len()].clone();
        tasks.spawn(async move {
            let reply = connect_uds(&uds, &echo.to_string()).await.unwrap();
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
    while let Some(r) = tokio::time::timeout(Duration::from_secs(120), tasks.join_next())
        .await
        .expect("connections finish in time")
    {
        r.unwrap();
    }
    started.elapsed()
}

/// While one stream's reader stalls for `stall` with `source` unread, round
/// trips on a second stream stay fast. Returns the worst round trip; the
/// stalled stream is then read to the end and checked.
pub async fn isolation(
    uds: &Path,
    source: SocketAddr,
    want: &[u8],
    echo: SocketAddr,
    stall: Duration,
) -> Duration {
    let mut slow = connect_uds(uds, &source.to_string()).await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.body);
    // Let the source fill every buffer on the way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fast = connect_uds(uds, &echo.to_string()).await.unwrap();
    assert_eq!(fast.status, 200, "{}", fast.body);
    let mut fast = fast.stream;
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < stall {
        let t = Instant::now();
        fast.write_all(b"ping\n").await.unwrap();
        let mut buf = [0u8; 5];
        fast.read_exact(&mut buf).await.unwrap();
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = Vec::with_capacity(want.len());
    slow.stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), want.len(), "stalled stream lost data");
    assert!(got == want, "stalled stream corrupted");
    worst
}
