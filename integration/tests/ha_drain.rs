//! Rolling restart of three replicas with SIGTERM (issue #14): a client
//! opening a connection every 100 ms through whichever replica is ready
//! sees no failure, and a 30 s streaming response through the draining
//! replica runs to its end.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::process::http_get;
use integration::replicas::{connect_echo, Replicas};
use integration::services::{echo_server_on, line_server_on};
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(30);
const LINES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restart_loses_nothing() {
    let mut r = Replicas::start(3, &["--drain-timeout=50s"]);
    let ip = |last: u8| IpAddr::from([127, 0, 0, last]);
    let echo = echo_server_on("127.0.0.51:0").await.unwrap();
    let lines = line_server_on("127.0.0.52:0", LINES, Duration::from_secs(1))
        .await
        .unwrap();
    let _a1 = r.agent("edge-1", ip(51), &[0, 1, 2], &[echo.to_string()]);
    let _a2 = r.agent("edge-2", ip(52), &[0, 1, 2], &[lines.to_string()]);
    for i in 0..3 {
        r.wait_nodes(i, &["edge-1", "edge-2"], LIMIT).unwrap();
    }

    // The 30 s streaming response, through r0 (which drains first).
    let uds0 = r.uds(0).to_path_buf();
    let mut stream = tokio::spawn(async move {
        let reply = integration::connect_uds(&uds0, &lines.to_string()).await?;
        anyhow::ensure!(reply.status == 200, "{}: {}", reply.status, reply.body);
        let mut s = reply.stream;
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await??;
        Ok::<_, anyhow::Error>(got.iter().filter(|b| **b == b'\n').count())
    });

    // The client: a new connection every 100 ms through a ready replica.
    let admins: Vec<_> = r.servers.iter().map(|s| s.admin_addr).collect();
    let sockets: Vec<_> = (0..3).map(|i| r.uds(i).to_path_buf()).collect();
    let done = Arc::new(AtomicBool::new(false));
    let client_done = done.clone();
    let client = tokio::spawn(async move {
        let (mut ok, mut failures) = (0usize, Vec::new());
        while !client_done.load(Ordering::Acquire) {
            let tick = tokio::time::sleep(Duration::from_millis(100));
            let ready = admins
                .iter()
                .position(|a| matches!(http_get(*a, "/readyz"), Ok((200, _))));
            if let Some(i) = ready {
                match connect_echo(&sockets[i], &echo.to_string(), b"ping").await {
                    Ok((200, back)) if back == b"ping" => ok += 1,
                    other => failures.push(format!("via r{i}: {other:?}")),
                }
            }
            tick.await;
        }
        (ok, failures)
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let started = Instant::now();
        r.servers[i].proc.signal(Signal::SIGTERM);
        // 503 as soon as the signal is handled (well within a second).
        let (status, body) = loop {
            let (status, body) = http_get(r.servers[i].admin_addr, "/readyz").unwrap();
            if status != 200 || started.elapsed() > Duration::from_secs(1) {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(status, 503, "r{i} still ready 1 s after SIGTERM: {body}");
        assert!(body.contains("draining"), "{body}");
        if i == 0 {
            // Still served while draining, through a peer (so r0 can empty).
            let (status, back) = connect_echo(r.uds(0), &echo.to_string(), b"late")
                .await
                .unwrap();
            assert_eq!((status, back.as_slice()), (200, &b"late"[..]));
            let m = r.servers[0].metrics().unwrap();
            assert!(m.contains("tunnel_server_peer_dials_total{peer="), "{m}");
            assert!(m.contains("result=\"ok\"} 1"), "{m}");
        }
        let deadline = Instant::now() + Duration::from_secs(55);
        let exit = loop {
            if let Some(status) = r.servers[i].proc.exit_status() {
                break status;
            }
            assert!(Instant::now() < deadline, "r{i} did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(exit.success(), "r{i} exited with {exit}");
        eprintln!("r{i} drained and exited after {:?}", started.elapsed());
        if i == 0 {
            // r0 waited for the stream, and the stream got every line.
            let got = tokio::time::timeout(Duration::from_secs(5), &mut stream)
                .await
                .expect("stream ended with r0")
                .unwrap()
                .unwrap();
            assert_eq!(
                got, LINES,
                "streaming response through the draining replica"
            );
            assert!(
                started.elapsed() > Duration::from_secs(25),
                "r0 did not wait for it"
            );
        }
        r.servers[i].restart().unwrap();
        r.wait_nodes(i, &["edge-1", "edge-2"], LIMIT).unwrap();
        eprintln!("r{i} back with both agents after {:?}", started.elapsed());
    }
    done.store(true, Ordering::Release);
    let (ok, failures) = client.await.unwrap();
    eprintln!("client: {ok} connections, {} failures", failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(ok > 100, "only {ok} connections");
}
