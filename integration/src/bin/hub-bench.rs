//! Node proxy HTTP benchmark: offline get and list latency through the hub
//! for a 1,000-pod namespace, against the same requests online.
//!
//! ```text
//! cargo build --release -p tunnel-server -p tunnel-agent -p integration
//! target/release/hub-bench [--pods 1000] [--lists 200] [--gets 1000]
//! target/release/hub-bench --idle-wire-seconds 60   # root: idle bytes per node
//! target/release/hub-bench --kubelet-wire-seconds 120 # root: a kubelet's bytes per node
//! ```
//!
//! `--idle-wire-seconds` instead measures what an idle node with
//! `--apiserver tunnel` costs on its link (QUIC keep-alives plus the hub's
//! health probes), counted by iptables on the server's UDP port, with the
//! old settings (2 s keep-alive, a probe every 500 ms) and the defaults.
//!
//! `--kubelet-wire-seconds` runs a kubelet-like node (its pods listed and
//! watched, lease renewals, status patches) through the node proxy with
//! `--apiserver tunnel` and counts its bytes on the wire the same way, with
//! the apiserver's gzip on and off (`integration::bench::kubelet_wire`).
//!
//! Prints a Markdown table on stdout; progress goes to stderr.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use integration::bench::kubelet_load::Cadence;
use integration::bench::kubelet_wire;
use integration::bench::measure::Millis;
use integration::bench::udp_wire::UdpWireCounter;
use integration::hub::{pod, HubEnv, HubOptions};
use integration::k8s::{ApiClient, Res};

#[derive(Debug, Parser)]
#[command(about = "Offline get/list latency through the node proxy (HTTP level)")]
struct Args {
    /// Pods in the listed namespace.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Timed list requests per phase.
    #[arg(long, default_value_t = 200)]
    lists: usize,
    /// Timed get requests per phase.
    #[arg(long, default_value_t = 1000)]
    gets: usize,
    /// Instead: measure an idle node's wire bytes for this many seconds per setting.
    #[arg(long, default_value_t = 0)]
    idle_wire_seconds: u64,
    /// Instead: measure a kubelet-like node's wire bytes, this many steady seconds per setting.
    #[arg(long, default_value_t = 0)]
    kubelet_wire_seconds: u64,
    /// Pods on the kubelet-like node (--kubelet-wire-seconds).
    #[arg(long, default_value_t = 100)]
    node_pods: usize,
}

async fn time_requests(
    client: &ApiClient,
    paths: &[String],
    n: usize,
) -> anyhow::Result<(f64, f64, usize)> {
    let mut samples = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        let path = &paths[i % paths.len()];
        let started = Instant::now();
        let r = client.get(path).await?;
        samples.push(started.elapsed());
        anyhow::ensure!(r.status == 200, "{path}: status {}", r.status);
        bytes = r.body.len();
    }
    let m = Millis::of(samples).context("no requests timed")?;
    Ok((m.p50, m.p99, bytes))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.idle_wire_seconds > 0 {
        return idle_wire(Duration::from_secs(args.idle_wire_seconds)).await;
    }
    if args.kubelet_wire_seconds > 0 {
        return kubelet_wire(
            args.node_pods,
            Duration::from_secs(args.kubelet_wire_seconds),
        )
        .await;
    }
    let env = HubEnv::start(HubOptions::default()).await?;
    env.wait_reachable(true, Duration::from_secs(30)).await?;
    let pods = Res::pods();
    for i in 0..args.pods {
        let app = ["web", "db", "cache", "batch"][i % 4];
        env.api.upsert(
            &pods,
            pod(
                "bench",
                &format!("pod-{i:05}"),
                &[("app", app), ("tier", "x")],
                "edge-1",
                "Running",
            ),
        );
    }
    let kubelet = env.kubelet().with_timeout(Duration::from_secs(60));
    let list = vec!["/api/v1/namespaces/bench/pods".to_string()];
    let selected = vec!["/api/v1/namespaces/bench/pods?labelSelector=app%3Dweb".to_string()];
    let gets: Vec<String> = (0..args.pods)
        .map(|i| format!("/api/v1/namespaces/bench/pods/pod-{i:05}"))
        .collect();
    eprintln!("online phase");
    let online_list = time_requests(&kubelet, &list, args.lists).await?;
    let online_get = time_requests(&kubelet, &gets, args.gets).await?;
    // The selector list is not stored as its own set: offline it is cut from the full list.
    env.relay.cut();
    env.wait_reachable(false, Duration::from_secs(30)).await?;
    eprintln!("offline phase");
    let offline_list = time_requests(&kubelet, &list, args.lists).await?;
    let offline_selected = time_requests(&kubelet, &selected, args.lists).await?;
    let offline_get = time_requests(&kubelet, &gets, args.gets).await?;

    println!(
        "| request ({} pods) | mode | p50 ms | p99 ms | body bytes |",
        args.pods
    );
    println!("|---|---|---:|---:|---:|");
    for (what, mode, (p50, p99, bytes)) in [
        ("list namespace", "online (upstream)", online_list),
        ("get one pod", "online (upstream)", online_get),
        ("list namespace", "offline (cache)", offline_list),
        ("list app=web (1/4)", "offline (cache)", offline_selected),
        ("get one pod", "offline (cache)", offline_get),
    ] {
        println!("| {what} | {mode} | {p50:.2} | {p99:.2} | {bytes} |");
    }
    Ok(())
}

/// The idle-node settings compared by `--idle-wire-seconds`: name, agent flags, server flags.
const IDLE_SETTINGS: [(&str, &[&str], &[&str]); 3] = [
    (
        "before: keep-alive 2 s (agent) / 2 s (server), probe every 500 ms",
        &[
            "--keepalive=2s",
            "--idle-timeout=15s",
            "--hub-idle-probe-interval=500ms",
        ],
        &["--agent-keepalive=2s", "--agent-idle-timeout=15s"],
    ),
    (
        "keep-alive defaults (10 s / 20 s), probe every 500 ms",
        &["--hub-idle-probe-interval=500ms"],
        &[],
    ),
    (
        "defaults: keep-alive 10 s / 20 s, probes ride the tunnel",
        &[],
        &[],
    ),
];

/// One idle node with `--apiserver tunnel` per setting: bytes on the wire and probes seen.
async fn idle_wire(window: Duration) -> anyhow::Result<()> {
    println!(
        "| setting | up B/s | down B/s | packets/s up / down | probes in {} s |",
        window.as_secs()
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, agent, server) in IDLE_SETTINGS {
        eprintln!("idle node: {name}");
        let env = HubEnv::start(HubOptions {
            via_tunnel: true,
            agent_args: agent.iter().map(|s| s.to_string()).collect(),
            server_args: server.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await?;
        env.wait_reachable(true, Duration::from_secs(30)).await?;
        // Let the start-up probes and the first keep-alives pass.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let counter = UdpWireCounter::start(env.cluster.server.agent_addr.port())?;
        let before = counter.read()?;
        env.api.clear_requests();
        tokio::time::sleep(window).await;
        let wire = counter.read()?.since(&before);
        let probes = env.probes_seen();
        let per_s = |v: u64| v as f64 / window.as_secs_f64();
        println!(
            "| {name} | {:.1} | {:.1} | {:.2} / {:.2} | {probes} |",
            per_s(wire.to_port.1),
            per_s(wire.from_port.1),
            per_s(wire.to_port.0),
            per_s(wire.from_port.0),
        );
    }
    Ok(())
}

/// A kubelet-like node with `--apiserver tunnel`, apiserver gzip off then on.
async fn kubelet_wire(pods: usize, window: Duration) -> anyhow::Result<()> {
    let cadence = Cadence::default();
    let mut runs = Vec::new();
    for compression in [false, true] {
        eprintln!("kubelet-like node, apiserver gzip {compression}: {pods} pods");
        runs.push(kubelet_wire::measure(compression, pods, window, cadence).await?);
    }
    print!("{}", kubelet_wire::markdown(&runs, pods, cadence));
    Ok(())
}
