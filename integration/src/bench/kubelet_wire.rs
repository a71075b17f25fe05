//! `hub-bench --kubelet-wire-seconds`: what one kubelet-like node costs on
//! the tunnel's wire. A real tunnel-server and tunnel-agent with
//! `--apiserver tunnel` (QUIC over loopback), the fake apiserver behind the
//! server, the workload of [`super::kubelet_load`] through the agent's node
//! proxy; bytes counted by iptables on the server's UDP port (IP and UDP
//! headers included), once with the apiserver compressing as kube-apiserver
//! does and once with compression off (what crossed the link before the node
//! proxy asked for gzip).
//!
//! Besides the totals it measures each kind of request alone (a burst of
//! them, minus the idle rate) and the idle rate itself (QUIC keep-alives and
//! nothing else), so a steady rate can be taken apart.

use std::time::{Duration, Instant};

use super::kubelet_load::{steady, Cadence, Kubelet};
use super::kubelet_objects::{seed, services};
use super::udp_wire::{UdpWire, UdpWireCounter};
use crate::hub::{HubEnv, HubOptions};
use crate::k8s::Res;

const NODE: &str = "edge-1";
const LIMIT: Duration = Duration::from_secs(60);
/// Requests per burst when one kind of request is measured alone.
const BURST: u64 = 10;

/// Bytes each way over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// cloud → edge (from the server's port), bytes.
    pub down: u64,
    /// edge → cloud (to the server's port), bytes.
    pub up: u64,
    pub secs: f64,
}

impl Flow {
    fn of(w: UdpWire, secs: f64) -> Self {
        Self {
            down: w.from_port.1,
            up: w.to_port.1,
            secs,
        }
    }

    fn per_s(v: u64, secs: f64) -> f64 {
        if secs > 0.0 {
            v as f64 / secs
        } else {
            0.0
        }
    }

    /// (down, up) in B/s.
    pub fn rate(&self) -> (f64, f64) {
        (
            Self::per_s(self.down, self.secs),
            Self::per_s(self.up, self.secs),
        )
    }
}

/// One node's measurements with compression on or off.
#[derive(Debug, Clone)]
pub struct NodeWire {
    pub compression: bool,
    pub initial: Flow,
    /// Decoded bytes of the initial lists and GET (what the kubelet read).
    pub initial_decoded: u64,
    pub gzipped_responses: usize,
    pub steady: Flow,
    pub idle: Flow,
    /// (what, bytes down, bytes up) per single request, idle traffic subtracted.
    pub per_request: Vec<(&'static str, f64, f64)>,
    pub watch_events: u64,
    pub counts: super::kubelet_load::SteadyCounts,
}

/// Reads the counter and the clock.
fn mark(counter: &UdpWireCounter) -> anyhow::Result<(UdpWire, Instant)> {
    Ok((counter.read()?, Instant::now()))
}

fn flow_since(counter: &UdpWireCounter, from: (UdpWire, Instant)) -> anyhow::Result<Flow> {
    let now = counter.read()?;
    Ok(Flow::of(now.since(&from.0), from.1.elapsed().as_secs_f64()))
}

/// Runs the whole measurement for one setting of the apiserver's compression.
pub async fn measure(
    compression: bool,
    pods: usize,
    window: Duration,
    cadence: Cadence,
) -> anyhow::Result<NodeWire> {
    let env = HubEnv::start(HubOptions {
        via_tunnel: true,
        ..Default::default()
    })
    .await?;
    env.api.set_compression(compression);
    env.wait_reachable(true, Duration::from_secs(30)).await?;
    seed(&env.api, NODE, pods);
    // Let the start-up probes and the first keep-alives pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counter = UdpWireCounter::start(env.cluster.server.agent_addr.port())?;
    let client = env
        .kubelet()
        .with_accept_encoding("gzip")
        .with_timeout(LIMIT);
    let mut kubelet = Kubelet::new(client, NODE);
    let t = mark(&counter)?;
    let initial_decoded = kubelet.initial_sync().await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // the last ACKs
    let initial = flow_since(&counter, t)?;
    let gzipped_responses = env.api.gzipped_responses();

    // Idle: watches held, nothing sent (keep-alives only).
    let idle_for = (window / 4).max(Duration::from_secs(10));
    let t = mark(&counter)?;
    tokio::time::sleep(idle_for).await;
    let idle = flow_since(&counter, t)?;

    // Each kind of request alone: a burst, minus what idle would have sent meanwhile.
    let mut per_request = Vec::new();
    for what in [
        "lease PUT",
        "node status PATCH",
        "pod status PATCH",
        "3 bookmarks",
    ] {
        let t = mark(&counter)?;
        for n in 0..BURST {
            match what {
                "lease PUT" => kubelet.renew_lease(1000 + n).await?,
                "node status PATCH" => kubelet.patch_node_status(1000 + n).await?,
                "pod status PATCH" => kubelet.patch_pod_status(pods, 1000 + n).await?,
                _ => {
                    for res in [Res::pods(), Res::nodes(), services()] {
                        env.api.emit_bookmark(&res);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let f = flow_since(&counter, t)?;
        let (idle_down, idle_up) = idle.rate();
        let one = |bytes: u64, idle_rate: f64| {
            ((bytes as f64 - idle_rate * f.secs) / BURST as f64).max(0.0)
        };
        per_request.push((what, one(f.down, idle_down), one(f.up, idle_up)));
    }

    // Steady kubelet traffic.
    let events_before = kubelet.events.load(std::sync::atomic::Ordering::Relaxed);
    let t = mark(&counter)?;
    let counts = steady(&kubelet, &env.api, pods, cadence, window).await?;
    let steady_flow = flow_since(&counter, t)?;
    let watch_events = kubelet.events.load(std::sync::atomic::Ordering::Relaxed) - events_before;
    Ok(NodeWire {
        compression,
        initial,
        initial_decoded,
        gzipped_responses,
        steady: steady_flow,
        idle,
        per_request,
        watch_events,
        counts,
    })
}

/// The Markdown report of both runs.
pub fn markdown(runs: &[NodeWire], pods: usize, cadence: Cadence) -> String {
    let mut out = String::new();
    let on_off = |c: bool| if c { "on" } else { "off" };
    out.push_str(&format!(
        "Initial sync (GET node; list pods of the node ({pods}), the node, services; watches started):\n\n\
         | apiserver gzip | cloud→edge bytes | edge→cloud bytes | decoded JSON bytes | gzipped responses |\n\
         |---|---:|---:|---:|---:|\n"
    ));
    for r in runs {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            on_off(r.compression),
            r.initial.down,
            r.initial.up,
            r.initial_decoded,
            r.gzipped_responses
        ));
    }
    out.push_str(&format!(
        "\nSteady state (lease every {} s, node status every {} s, pod status every {} s, \
         3 watch bookmarks every {} s):\n\n\
         | apiserver gzip | seconds | cloud→edge B/s | edge→cloud B/s | total B/s | requests | watch events |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        cadence.lease.as_secs(),
        cadence.node_status.as_secs(),
        cadence.pod_status.as_secs(),
        cadence.bookmark.as_secs(),
    ));
    for r in runs {
        let (down, up) = r.steady.rate();
        let c = r.counts;
        out.push_str(&format!(
            "| {} | {:.0} | {down:.0} | {up:.0} | {:.0} | {} | {} |\n",
            on_off(r.compression),
            r.steady.secs,
            down + up,
            c.leases + c.node_status + c.pod_status,
            r.watch_events,
        ));
    }
    out.push_str(
        "\nBreakdown (compression on; one request alone, idle traffic subtracted):\n\n\
         | what | cloud→edge bytes | edge→cloud bytes | per steady second (B/s, both ways) |\n\
         |---|---:|---:|---:|\n",
    );
    if let Some(r) = runs.iter().find(|r| r.compression).or(runs.first()) {
        let (idle_down, idle_up) = r.idle.rate();
        out.push_str(&format!(
            "| idle: keep-alives, watches held ({:.0} s) | {idle_down:.1}/s | {idle_up:.1}/s | {:.1} |\n",
            r.idle.secs,
            idle_down + idle_up
        ));
        let periods = [
            cadence.lease,
            cadence.node_status,
            cadence.pod_status,
            cadence.bookmark,
        ];
        let mut sum = idle_down + idle_up;
        for ((what, down, up), period) in r.per_request.iter().zip(periods) {
            let rate = (down + up) / period.as_secs_f64();
            sum += rate;
            out.push_str(&format!(
                "| {what} (every {} s) | {down:.0} | {up:.0} | {rate:.1} |\n",
                period.as_secs(),
            ));
        }
        out.push_str(&format!("| sum | | | {sum:.1} |\n"));
    }
    out
}
