//! An emulated weak link between a cloud and an edge namespace, built from
//! what this kernel has (no `sch_netem`):
//!
//! ```text
//!  cloud ns                 wire ns (router)                              edge ns
//!  lc 10.234.1.1/24 <-veth-> wc 10.234.1.2/24   we 10.234.2.1/24 <-veth-> le 10.234.2.2/24
//!                           FORWARD: random DROP (loss) -> NFQUEUE 0 (delay line)
//!                           egress of wc and we: tbf (rate, drop-tail queue)
//! ```
//!
//! Every packet crossing the wire namespace, in either direction, is first
//! dropped with probability `loss`, then held for the one-way delay by the
//! user-space delay line ([`super::delay_line`]), then queued in the egress
//! `tbf` of the far interface, which sends it at `rate` and drops from the
//! tail once `queue_bytes` are waiting: the bottleneck sits in the network,
//! as a home router's would, not in the sender's own qdisc (where TCP
//! would feel back-pressure instead of loss).
//!
//! Names carry the process id and a counter, so two links never collide;
//! everything is removed on drop.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

use crate::netns::{in_ns, run};

/// The link's shape.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// Bottleneck rate in both directions, bits per second.
    pub rate_bit: u64,
    /// One-way delay (RTT = twice this).
    pub one_way_ms: u64,
    /// Random loss per direction, 0.0..1.0.
    pub loss: f64,
    /// Drop-tail queue of each direction's bottleneck, bytes.
    pub queue_bytes: u64,
    /// TCP congestion control of both ends (plain TCP and WebSocket).
    pub tcp_congestion: &'static str,
}

impl LinkShape {
    pub fn rtt_ms(&self) -> u64 {
        2 * self.one_way_ms
    }

    /// One bandwidth-delay product in bytes, the classic router buffer size.
    pub fn bdp_bytes(&self) -> u64 {
        self.rate_bit / 8 * self.rtt_ms() / 1000
    }
}

/// The three namespaces and their wiring.
pub struct EmulatedLink {
    pub cloud_ns: String,
    pub wire_ns: String,
    pub edge_ns: String,
    pub shape: LinkShape,
}

/// The cloud end's address (tunnel-server, bench clients).
pub const CLOUD_IP: Ipv4Addr = Ipv4Addr::new(10, 234, 1, 1);
/// The edge end's address (tunnel-agent, the services).
pub const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 234, 2, 2);

/// The NFQUEUE number the wire namespace's FORWARD chain hands packets to.
pub const QUEUE: u16 = 0;

impl EmulatedLink {
    /// Creates the namespaces, addresses, routes, loss rule and rate limits.
    /// Until a delay line is bound to [`QUEUE`] in the wire namespace,
    /// nothing crosses (NFQUEUE without a listener drops).
    pub fn create(shape: LinkShape) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let link = Self {
            cloud_ns: format!("lb{id}c"),
            wire_ns: format!("lb{id}w"),
            edge_ns: format!("lb{id}e"),
            shape,
        };
        link.wire().context("building the emulated link")?;
        Ok(link)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (c, w, e) = (&self.cloud_ns, &self.wire_ns, &self.edge_ns);
        for ns in [c, w, e] {
            run("ip", &["netns", "add", ns])?;
            in_ns(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        let veths = [(c.as_str(), "lc", "wc"), (e.as_str(), "le", "we")];
        for (ns, end, wire_end) in veths {
            run(
                "ip",
                &[
                    "link", "add", end, "netns", ns, "type", "veth", "peer", "name", wire_end,
                    "netns", w,
                ],
            )?;
        }
        let addr = |ns: &str, dev: &str, cidr: &str| -> anyhow::Result<()> {
            in_ns(ns, &["ip", "addr", "add", cidr, "dev", dev])?;
            in_ns(ns, &["ip", "link", "set", dev, "up"])?;
            Ok(())
        };
        addr(c, "lc", "10.234.1.1/24")?;
        addr(w, "wc", "10.234.1.2/24")?;
        addr(w, "we", "10.234.2.1/24")?;
        addr(e, "le", "10.234.2.2/24")?;
        in_ns(c, &["ip", "route", "add", "default", "via", "10.234.1.2"])?;
        in_ns(e, &["ip", "route", "add", "default", "via", "10.234.2.1"])?;
        in_ns(w, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let cc = format!(
            "net.ipv4.tcp_congestion_control={}",
            self.shape.tcp_congestion
        );
        for ns in [c, e] {
            in_ns(ns, &["sysctl", "-qw", &cc]).with_context(|| {
                format!(
                    "a namespace may use only the controllers in \
                     net.ipv4.tcp_allowed_congestion_control (now: {}); add {} there \
                     or pass --tcp-congestion with one of them",
                    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
                        .unwrap_or_default()
                        .trim(),
                    self.shape.tcp_congestion
                )
            })?;
        }

        let rate = format!("{}bit", self.shape.rate_bit);
        let limit = self.shape.queue_bytes.to_string();
        for dev in ["wc", "we"] {
            // burst: a few packets, the least tbf accepts at this rate.
            in_ns(
                w,
                &[
                    "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst",
                    "6000", "limit", &limit,
                ],
            )?;
        }
        if self.shape.loss > 0.0 {
            let p = format!("{:.6}", self.shape.loss);
            in_ns(
                w,
                &[
                    "iptables",
                    "-A",
                    "FORWARD",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        in_ns(
            w,
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &QUEUE.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Waits until nothing has crossed the edge-bound bottleneck for
    /// `quiet` (at most `limit`): a phase must not measure the tail of the
    /// previous one, such as megabytes of an aborted bulk transfer still in
    /// a sender's buffers.
    pub async fn wait_idle(&self, quiet: std::time::Duration, limit: std::time::Duration) {
        let sent = || {
            self.qdisc_stats("we")
                .ok()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        };
        let deadline = std::time::Instant::now() + limit;
        let mut last = sent();
        let mut since = std::time::Instant::now();
        while std::time::Instant::now() < deadline && since.elapsed() < quiet {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let now = sent();
            if now != last {
                last = now;
                since = std::time::Instant::now();
            }
        }
    }

    /// Packets and bytes the tbf of `dev` ("wc" = towards the cloud, "we" =
    /// towards the edge) sent and dropped: proof the bottleneck was hit.
    pub fn qdisc_stats(&self, dev: &str) -> anyhow::Result<String> {
        let out = in_ns(&self.wire_ns, &["tc", "-s", "qdisc", "show", "dev", dev])?;
        Ok(out
            .lines()
            .find(|l| l.trim_start().starts_with("Sent"))
            .unwrap_or("")
            .trim()
            .to_string())
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them the peers.
        for ns in [&self.edge_ns, &self.wire_ns, &self.cloud_ns] {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}
