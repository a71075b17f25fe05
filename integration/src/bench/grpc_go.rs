//! The gRPC front end measured with grpc-go as the client: the Go peer
//! ([`crate::peers`]) in `forward` mode listens on one loopback TCP port per
//! bench service and turns every accepted connection into what
//! kube-apiserver's konnectivity-client does per request (new Unix-socket
//! connection, HTTP/2 handshake, one Proxy stream, DIAL_REQ → DIAL_RSP, DATA
//! in 32 KiB `io.Copy` pieces, CLOSE_REQ). The bench then dials those ports
//! like any TCP path, so every phase runs unchanged; the adapter's extra
//! loopback hop is part of the numbers (it stands where the apiserver's own
//! socket to the client would be).
//!
//! [`GoTimer`] also times dials inside grpc-go itself, with no
//! adapter hop: what kube-apiserver waits for per `kubectl logs`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::procs::Owned;
use crate::peers::{Endpoint, Peer, PeerProgram};

/// How long the adapter may take to build and listen.
const START_LIMIT: Duration = Duration::from_secs(120);

/// The running Go adapter.
pub struct Adapter {
    pub proc: Owned,
    /// Times dials inside the Go client, against the same front end.
    pub timer: GoTimer,
    /// Local listeners, in the order of the targets given to [`Adapter::start`].
    pub listeners: Vec<SocketAddr>,
}

impl Adapter {
    /// Builds the Go peer into `bin_dir` (cached) and starts it against the
    /// front end on `uds`, one listener per target.
    pub fn start(
        bin_dir: &Path,
        dir: &Path,
        uds: &Path,
        targets: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let prog = PeerProgram::locate(Peer::Go, bin_dir)?;
        let map: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let cmd = prog.std_command(
            Some(&Endpoint::Uds(uds.to_path_buf())),
            "forward",
            &[format!("--map={}", map.join(","))],
        );
        let log = dir.join("grpc-go-adapter.log");
        let mut proc = Owned::spawn("grpc-go adapter", cmd, log.clone())?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let event = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == "listening");
            if let Some(v) = event {
                let listeners = v["listeners"]
                    .as_array()
                    .context("listening event without listeners")?
                    .iter()
                    .map(|a| a.as_str().unwrap_or_default().parse())
                    .collect::<Result<Vec<SocketAddr>, _>>()
                    .context("adapter listener address")?;
                if listeners.len() != targets.len() {
                    bail!("adapter listens on {listeners:?} for {targets:?}");
                }
                return Ok(Self {
                    proc,
                    timer: GoTimer {
                        prog,
                        uds: uds.to_path_buf(),
                    },
                    listeners,
                });
            }
            proc.check_running()?;
            if Instant::now() > deadline {
                bail!("grpc-go adapter not listening within {START_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Dials timed by the Go client itself ([`GoTimer::run`]).
#[derive(Debug, Clone, Copy)]
pub struct GoTimed {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs the Go peer's `echo` mode against the front end.
#[derive(Debug, Clone)]
pub struct GoTimer {
    prog: PeerProgram,
    uds: std::path::PathBuf,
}

impl GoTimer {
    /// `n` sequential dials timed in grpc-go (`echo` mode of the Go peer):
    /// each a new Unix-socket connection, HTTP/2 handshake, Proxy stream,
    /// DIAL_REQ → DIAL_RSP, one echoed DATA packet and CLOSE_REQ, to `echo`.
    pub fn run(&self, echo: SocketAddr, n: usize) -> anyhow::Result<GoTimed> {
        let mut cmd = self.prog.std_command(
            Some(&Endpoint::Uds(self.uds.clone())),
            "echo",
            &[format!("--target={echo}"), format!("--n={n}")],
        );
        let out = cmd.output().context("running the Go peer in echo mode")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = text
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| {
                format!(
                    "no result from the Go peer (exit {:?}): {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        let ok = v["ok"].as_u64().unwrap_or(0);
        if ok != n as u64 {
            bail!("{ok} of {n} dials succeeded: {v}");
        }
        let us = |k: &str| v[k].as_f64().with_context(|| format!("{k} missing in {v}"));
        Ok(GoTimed {
            p50_us: us("p50_us")?,
            p99_us: us("p99_us")?,
        })
    }
}
