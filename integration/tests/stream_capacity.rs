//! Thousands of concurrent streams to one node, over both transports: all
//! stay alive and echoing, and the stream past `--max-streams-per-node` is
//! answered 503 at once without touching the others.
//!
//! Before, QUIC hung every stream past its 4,096 stream credit (no answer at
//! all), and yamux ended the node's whole WebSocket connection when the
//! server opened its 4,097th stream.

use std::path::Path;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use integration::client::connect_uds;
use integration::process::{metric_value, raise_fd_limit};
use integration::services::echo_server;
use integration::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const STREAMS: usize = 5_000;
/// Opens in flight at once, as the measurement did.
const PARALLEL: usize = 100;

async fn echo_check(s: &mut UnixStream, i: usize) -> std::io::Result<()> {
    let msg = format!("stream {i}\n");
    s.write_all(msg.as_bytes()).await?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got))
        .await
        .map_err(|_| std::io::Error::other(format!("stream {i}: no echo within 20 s")))??;
    if got != msg.as_bytes() {
        return Err(std::io::Error::other(format!("stream {i}: wrong echo")));
    }
    Ok(())
}

async fn open_checked(uds: &Path, target: String, i: usize) -> UnixStream {
    let reply = connect_uds(uds, &target)
        .await
        .unwrap_or_else(|e| panic!("stream {i}: {e}"));
    assert_eq!(reply.status, 200, "stream {i}: {}", reply.body);
    let mut s = reply.stream;
    echo_check(&mut s, i).await.unwrap();
    s
}

async fn thousands_of_streams(transport: &str) {
    raise_fd_limit();
    let echo = echo_server().await.unwrap();
    let limit = STREAMS.to_string();
    let c = Cluster::start(
        ClusterOptions::allowing(&[echo.to_string()], &[&format!("--transport={transport}")])
            .server_args(&[&format!("--max-streams-per-node={limit}")]),
    );
    let uds = c.uds();
    let started = Instant::now();
    let mut open: Vec<UnixStream> = stream::iter(0..STREAMS)
        .map(|i| open_checked(&uds, echo.to_string(), i))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    eprintln!(
        "{transport}: {} streams open and echoing after {:?}",
        open.len(),
        started.elapsed()
    );
    let agents = c.server.agents().unwrap();
    assert_eq!(agents[0]["transport"], transport, "{agents}");
    assert_eq!(agents[0]["streams"], STREAMS as u64, "{agents}");

    // One over the limit: a 503 naming it, at once.
    let asked = Instant::now();
    let over = connect_uds(&uds, &echo.to_string()).await.unwrap();
    let took = asked.elapsed();
    assert_eq!(over.status, 503, "{}", over.body);
    assert!(
        over.body.contains("--max-streams-per-node"),
        "{}",
        over.body
    );
    eprintln!("{transport}: stream {} refused in {took:?}", STREAMS + 1);
    assert!(took < Duration::from_millis(100), "refusal took {took:?}");

    // Every stream is still alive.
    for (i, s) in open.iter_mut().enumerate() {
        echo_check(s, i).await.unwrap();
    }
    let m = c.server.metrics().unwrap();
    assert_eq!(
        metric_value(&m, "tunnel_server_streams_active{frontend=\"connect\"}"),
        Some(STREAMS as f64)
    );
    let reconnects = metric_value(
        &c.agent().metrics().unwrap(),
        "tunnel_agent_reconnects_total",
    );
    assert_eq!(
        reconnects.unwrap_or(0.0),
        0.0,
        "the node's connection dropped"
    );

    // Closing them frees every slot.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = c.server.agents().unwrap();
        if agents[0]["streams"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "streams not released: {agents}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = connect_uds(&uds, &echo.to_string()).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.body);
}

/// One test for both transports: run side by side they would need twice
/// the file descriptors (20,000 here, the usual hard limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_streams_to_one_node_over_quic_and_websocket() {
    thousands_of_streams("quic").await;
    thousands_of_streams("websocket").await;
}
