//! Chaos (issue 12, build item 8): the edge link of an agent behind NAT is
//! dropped and restored again and again (iptables DROP in the NAT namespace)
//! while checksummed transfers and exec-like echo sessions run through the
//! tunnel. Short flaps stall streams (QUIC retransmits); every fifth flap
//! outlasts the idle timeouts, so the connection dies and the agent must
//! reconnect. Afterwards: the agent is back, every transfer that completed
//! is intact, every other one ended with an error or visibly short (never
//! full-length with wrong bytes), and no stream is left open on the server.
//!
//! `CHAOS_FLAPS` sets the number of flaps (default 30, about a minute; the
//! issue's long run is `CHAOS_FLAPS=100`). Needs root and `ip netns`;
//! elsewhere it prints `SKIPPED` and passes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::netns::{self, forward_drop, Blocked, NatTopology};
use integration::services::{echo_server_on, pattern, sha256_hex, source_server_on};
use integration::{connect_uds, AgentOptions, AgentProc, ServerOptions, ServerProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRANSFER_BYTES: usize = 2 * 1024 * 1024;
/// Bound for one transfer or echo session; a stalled one fails at this point.
const OP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Tally {
    intact: AtomicUsize,
    failed: AtomicUsize,
}

/// One logs-like transfer: intact, or failed (error, refusal, or short).
async fn transfer(uds: PathBuf, target: String, want: Arc<Vec<u8>>, tally: Arc<Tally>) {
    let run = async {
        let mut r = connect_uds(&uds, &target)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body));
        }
        let mut got = Vec::with_capacity(want.len());
        r.stream
            .read_to_end(&mut got)
            .await
            .map_err(|e| e.to_string())?;
        if got.len() != want.len() {
            return Err(format!("short: {} of {} bytes", got.len(), want.len()));
        }
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&want),
            "a complete transfer arrived with wrong bytes"
        );
        Ok(())
    };
    match tokio::time::timeout(OP_LIMIT, run).await {
        Ok(Ok(())) => tally.intact.fetch_add(1, Ordering::Relaxed),
        _ => tally.failed.fetch_add(1, Ordering::Relaxed),
    };
}

/// One exec-like session: 20 round trips of 4 KiB, each echoed back exactly.
async fn session(uds: PathBuf, target: String, seed: u64, tally: Arc<Tally>) {
    let run = async {
        let mut r = connect_uds(&uds, &target)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body));
        }
        for i in 0..20u64 {
            let msg = pattern(4096, seed * 100 + i);
            r.stream.write_all(&msg).await.map_err(|e| e.to_string())?;
            let mut back = vec![0u8; msg.len()];
            r.stream
                .read_exact(&mut back)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(back, msg, "echo corrupted");
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(OP_LIMIT, run).await {
        Ok(Ok(())) => tally.intact.fetch_add(1, Ordering::Relaxed),
        _ => tally.failed.fetch_add(1, Ordering::Relaxed),
    };
}

fn gauge_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_transfers_survive_a_flapping_edge_link() {
    if netns::skip_unless_available("agents_and_transfers_survive_a_flapping_edge_link") {
        return;
    }
    let flaps: usize = std::env::var("CHAOS_FLAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let edge_ip = IpAddr::V4(topo.edge_ip);
    let edge = topo.edge_runtime().expect("edge runtime");
    let data = Arc::new(pattern(TRANSFER_BYTES, 12));
    let (source, echo) = {
        let data = data.clone();
        edge.spawn(async move {
            Ok::<_, std::io::Error>((
                source_server_on(&format!("{edge_ip}:0"), data).await?,
                echo_server_on(&format!("{edge_ip}:0")).await?,
            ))
        })
        .await
        .unwrap()
        .expect("edge services")
    };
    let pki = topo.cloud_pki(tmp.path()).expect("certificates");
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            agent_host: Some(topo.cloud_ip.to_string()),
            args: vec![
                "--agent-keepalive=500ms".into(),
                "--agent-idle-timeout=2s".into(),
                "--dial-timeout=3s".into(),
            ],
            ..Default::default()
        },
    )
    .expect("server");
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &[edge_ip],
        AgentOptions {
            allow: vec![source.to_string(), echo.to_string()],
            netns: Some(topo.edge_ns.clone()),
            args: vec![
                "--keepalive=500ms".into(),
                "--idle-timeout=2s".into(),
                "--transport=quic".into(),
            ],
            ..Default::default()
        },
    )
    .expect("agent");
    server.wait_agents(1, Duration::from_secs(20)).unwrap();
    let uds = server.uds.clone().unwrap();

    // Load: a transfer and a session started every 500 ms while flapping.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let load = {
        let (stop, tally, uds, data) = (stop.clone(), tally.clone(), uds.clone(), data.clone());
        tokio::spawn(async move {
            let mut ops = tokio::task::JoinSet::new();
            let mut seed = 0;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                ops.spawn(transfer(
                    uds.clone(),
                    source.to_string(),
                    data.clone(),
                    tally.clone(),
                ));
                ops.spawn(session(uds.clone(), echo.to_string(), seed, tally.clone()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            while ops.join_next().await.is_some() {}
        })
    };
    let started = Instant::now();
    for i in 0..flaps {
        let down = if i % 5 == 4 {
            Duration::from_millis(3000)
        } else {
            Duration::from_millis(300)
        };
        forward_drop(&topo.nat_ns, Blocked::All, true);
        tokio::time::sleep(down).await;
        forward_drop(&topo.nat_ns, Blocked::All, false);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let flapping = started.elapsed();

    // The agent comes back and the tunnel works.
    server.wait_agents(1, Duration::from_secs(20)).unwrap();
    transfer(uds.clone(), source.to_string(), data.clone(), tally.clone()).await;
    let (intact, failed) = (
        tally.intact.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    println!(
        "{flaps} flaps in {flapping:?}: {intact} operations intact, {failed} failed with an error"
    );
    assert!(intact > 0, "nothing completed");
    // No stream left open on the server (the agent's admin port is inside
    // the edge namespace; its streams end with the server's side of each).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let open = gauge_sum(&server.metrics().unwrap(), "tunnel_server_streams_active");
        if open == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} streams left open");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(edge);
}
