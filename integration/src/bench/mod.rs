//! `tunnel-bench`: direct TCP versus the tunnel (and `ssh -R`, rathole) on
//! loopback, in one run. See `docs/benchmarks.md` for method and results.
//!
//! Every path ends at the same in-process services ([`services`]), so the
//! only thing that differs between rows is what sits in the middle.

pub mod dial;
pub mod grpc_conn;
pub mod grpc_go;
pub mod http;
pub mod kubelet_load;
pub mod kubelet_objects;
pub mod kubelet_wire;
pub mod measure;
pub mod procs;
pub mod report;
pub mod services;
pub mod sys;
pub mod udp_wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use dial::Dialer;
use report::{Outcome, Row};

/// The paths the bench knows, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathName {
    /// Client → service over plain loopback TCP: the ceiling.
    Direct,
    /// CONNECT on the tunnel server's Unix socket → QUIC → agent → service.
    Tunnel,
    /// CONNECT on the tunnel server's mTLS TCP front end → QUIC → agent → service.
    TunnelTls,
    /// Konnectivity gRPC on the Unix socket → QUIC → agent → service.
    TunnelGrpc,
    /// The same with grpc-go as the client (kube-apiserver's stack), through
    /// a local TCP adapter ([`grpc_go`]).
    TunnelGrpcGo,
    /// CONNECT on the Unix socket → QUIC → agent → edge TLS service, with
    /// TLS end to end inside (the baseline for `tunnel-sni`).
    TunnelEdgeTls,
    /// TLS by server name on `--kubelet-addr` (SNI passthrough) → QUIC →
    /// agent → edge TLS service.
    TunnelSni,
    /// CONNECT on the Unix socket → WebSocket over TLS (yamux) → agent → service.
    TunnelWs,
    /// CONNECT on a second replica's Unix socket → the peer path (TLS,
    /// yamux) → the agent's replica → QUIC → agent → service.
    TunnelPeer,
    /// sshd (cloud) ← `ssh -N -R` (edge) → service.
    Ssh,
    /// rathole server (cloud) ← rathole client (edge), Noise transport → service.
    Rathole,
}

/// The measurements, selectable with `--phases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Memory,
    Latency,
    Single,
    Multi,
    /// One stream edge → cloud (`kubectl logs`), `--bytes` long.
    Download,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub bytes: u64,
    pub streams: usize,
    pub connections: usize,
    pub idle: usize,
    pub paths: Vec<PathName>,
    pub phases: Vec<Phase>,
    pub limit: Duration,
    pub rust_log: String,
    pub server_args: Vec<String>,
    pub agent_args: Vec<String>,
    pub bin_dir: PathBuf,
    pub rathole: Option<PathBuf>,
    pub keep: bool,
}

/// The processes of a path under test; dropped (killed) when the path is done.
enum Running {
    None,
    Tunnel(procs::Tunnel),
    Ssh(procs::Ssh),
    Rathole(procs::Rathole),
    /// The tunnel with the grpc-go adapter in front (dropped first).
    TunnelGo {
        adapter: grpc_go::Adapter,
        tunnel: procs::Tunnel,
    },
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        match self {
            Running::None => Vec::new(),
            Running::Tunnel(t) => t.pids(),
            Running::Ssh(s) => s.pids(),
            Running::Rathole(r) => r.pids(),
            // The adapter is the client side (kube-apiserver's part), like
            // the bench's own senders: not counted as the path.
            Running::TunnelGo { tunnel, .. } => tunnel.pids(),
        }
    }
}

/// Starts what `path` needs; returns the dialer, the processes, and the
/// label of its encryption.
fn start_path(
    cfg: &Config,
    path: PathName,
    dir: &std::path::Path,
    sink: SocketAddr,
    echo: SocketAddr,
    edge: &EdgeEnds,
) -> anyhow::Result<(Dialer, Running, String)> {
    Ok(match path {
        PathName::Direct => (Dialer::Tcp { sink, echo }, Running::None, "none".into()),
        PathName::Tunnel
        | PathName::TunnelTls
        | PathName::TunnelWs
        | PathName::TunnelPeer
        | PathName::TunnelGrpc
        | PathName::TunnelEdgeTls
        | PathName::TunnelSni => {
            let mut agent_args = cfg.agent_args.clone();
            if path == PathName::TunnelWs {
                agent_args.push("--transport=websocket".into());
            }
            // The SNI listener dials the edge TLS service's port on the node.
            let sni_addr = SocketAddr::from(([127, 0, 0, 1], crate::process::free_port()));
            let mut server_args = cfg.server_args.clone();
            if path == PathName::TunnelSni {
                server_args.push(format!("--kubelet-addr={sni_addr}"));
                server_args.push(format!("--kubelet-port={}", edge.addr.port()));
            }
            let t = procs::Tunnel::start_with(
                &cfg.bin_dir,
                dir,
                &[sink, echo, edge.addr],
                &cfg.rust_log,
                &server_args,
                &agent_args,
                path == PathName::TunnelPeer,
            )?;
            let (d, crypto) = if path == PathName::TunnelEdgeTls || path == PathName::TunnelSni {
                let d = if path == PathName::TunnelSni {
                    Dialer::Sni {
                        addr: sni_addr,
                        tls: edge.clients.clone(),
                    }
                } else {
                    Dialer::UdsEdgeTls {
                        path: t.uds.clone(),
                        edge: edge.addr,
                        tls: edge.clients.clone(),
                    }
                };
                (d, "TLS 1.3 end to end inside QUIC, both AES-256-GCM")
            } else if path == PathName::TunnelGrpc {
                (
                    Dialer::Grpc {
                        path: t.uds.clone(),
                        sink,
                        echo,
                    },
                    "QUIC, TLS 1.3 AES-256-GCM",
                )
            } else if path == PathName::TunnelWs {
                (
                    Dialer::Uds {
                        path: t.uds.clone(),
                        sink,
                        echo,
                    },
                    "WebSocket, TLS 1.3 AES-256-GCM, yamux",
                )
            } else if path == PathName::TunnelPeer {
                (
                    Dialer::Uds {
                        path: t.uds.clone(),
                        sink,
                        echo,
                    },
                    "peer path TLS 1.3 + QUIC, both AES-256-GCM",
                )
            } else if path == PathName::Tunnel {
                (
                    Dialer::Uds {
                        path: t.uds.clone(),
                        sink,
                        echo,
                    },
                    // Both ends use rustls' default ring provider, whose first
                    // TLS 1.3 suite is AES-256-GCM.
                    "QUIC, TLS 1.3 AES-256-GCM",
                )
            } else {
                (
                    Dialer::Tls {
                        addr: t.proxy_addr,
                        connector: t.tls_connector()?,
                        sink,
                        echo,
                    },
                    "TLS 1.3 front end + QUIC, both AES-256-GCM",
                )
            };
            (d, Running::Tunnel(t), crypto.into())
        }
        PathName::TunnelGrpcGo => {
            let t = procs::Tunnel::start(
                &cfg.bin_dir,
                dir,
                &[sink, echo],
                &cfg.rust_log,
                &cfg.server_args,
                &cfg.agent_args,
            )?;
            let a = grpc_go::Adapter::start(&cfg.bin_dir, dir, &t.uds, &[sink, echo])?;
            let d = Dialer::Tcp {
                sink: a.listeners[0],
                echo: a.listeners[1],
            };
            (
                d,
                Running::TunnelGo {
                    adapter: a,
                    tunnel: t,
                },
                "QUIC, TLS 1.3 AES-256-GCM".into(),
            )
        }
        PathName::Ssh => {
            let sshd = procs::find_tool("sshd")
                .context("sshd not installed (apt-get install openssh-server)")?;
            let ssh = procs::find_tool("ssh")
                .context("ssh not installed (apt-get install openssh-client)")?;
            let s = procs::Ssh::start(dir, &sshd, &ssh, &[sink, echo])?;
            let d = Dialer::Tcp {
                sink: s.listeners[0],
                echo: s.listeners[1],
            };
            let crypto = format!("SSH {} (OpenSSH default)", s.cipher);
            (d, Running::Ssh(s), crypto)
        }
        PathName::Rathole => {
            let bin = cfg
                .rathole
                .clone()
                .or_else(|| procs::find_tool("rathole"))
                .context("rathole not found on PATH or in ~/.cargo/bin (cargo install rathole)")?;
            let r = procs::Rathole::start(dir, &bin, &[sink, echo], &cfg.rust_log)?;
            let d = Dialer::Tcp {
                sink: r.listeners[0],
                echo: r.listeners[1],
            };
            let crypto = format!("Noise NK 25519 ChaChaPoly BLAKE2s ({})", r.version);
            (d, Running::Rathole(r), crypto)
        }
    })
}

/// The edge TLS service the TLS-end-to-end paths reach.
#[derive(Clone)]
struct EdgeEnds {
    addr: SocketAddr,
    clients: dial::EdgeClients,
}

/// Runs one phase with a hard time limit on top of the phase's own checks,
/// so no single stuck operation can hold the run forever.
async fn bounded<T>(
    limit: Duration,
    phase: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let hard = limit + Duration::from_secs(30);
    tokio::time::timeout(hard, phase)
        .await
        .with_context(|| format!("phase did not finish within {hard:?}"))?
}

fn label(path: PathName) -> &'static str {
    match path {
        PathName::Direct => "direct TCP",
        PathName::Tunnel => "tunnel (UDS CONNECT)",
        PathName::TunnelTls => "tunnel (mTLS CONNECT)",
        PathName::TunnelGrpc => "tunnel (UDS Konnectivity gRPC)",
        PathName::TunnelGrpcGo => "tunnel (UDS Konnectivity gRPC, grpc-go client)",
        PathName::TunnelEdgeTls => "tunnel (UDS CONNECT) + TLS to edge",
        PathName::TunnelSni => "tunnel (SNI passthrough) + TLS to edge",
        PathName::TunnelWs => "tunnel over WebSocket (UDS CONNECT)",
        PathName::TunnelPeer => "tunnel via a peer replica (UDS CONNECT)",
        PathName::Ssh => "ssh -R",
        PathName::Rathole => "rathole",
    }
}

/// Runs every selected path and phase; failures are recorded per cell and
/// never stop the other measurements.
pub async fn run(cfg: &Config) -> anyhow::Result<Vec<Row>> {
    let sink = services::sink_server().await?;
    let echo = services::echo_server().await?;
    let edge_tls = services::edge_tls_server(sink, echo.addr).await?;
    let edge = EdgeEnds {
        addr: edge_tls.addr,
        clients: dial::EdgeClients {
            sink: edge_tls.sink_client.clone(),
            echo: edge_tls.echo_client.clone(),
        },
    };
    let mut rows = Vec::new();
    for &path in &cfg.paths {
        let name = label(path);
        eprintln!("== {name}");
        let dir = tempfile::Builder::new()
            .prefix(&format!("tunnel-bench-{path:?}-").to_lowercase())
            .tempdir()?;
        let started = {
            let c = cfg.clone();
            let p = dir.path().to_path_buf();
            let echo_addr = echo.addr;
            let edge = edge.clone();
            tokio::task::spawn_blocking(move || start_path(&c, path, &p, sink, echo_addr, &edge))
                .await
                .context("start task")?
        };
        let (dialer, running, crypto) = match started {
            Ok(x) => x,
            Err(e) => {
                eprintln!("   not run: {e:#}");
                let mut row = Row::new(name, "");
                row.unavailable = Some(format!("{e:#}"));
                rows.push(row);
                continue;
            }
        };
        let mut row = Row::new(name, &crypto);
        let pids = running.pids();
        let has = |p: Phase| cfg.phases.contains(&p);

        // Memory first, on fresh processes (see `measure::idle_memory`).
        if has(Phase::Memory) && !matches!(running, Running::None) {
            eprintln!("   idle memory: {} connections", cfg.idle);
            row.idle = Outcome::from_result(
                bounded(
                    cfg.limit,
                    measure::idle_memory(&dialer, &echo, cfg.idle, &pids, cfg.limit),
                )
                .await,
            );
            eprintln!("   -> {:?}", row.idle);
        }
        if has(Phase::Latency) {
            eprintln!("   latency: {} connections", cfg.connections);
            row.latency = Outcome::from_result(
                bounded(
                    cfg.limit,
                    measure::latency(&dialer, cfg.connections, &pids, cfg.limit),
                )
                .await,
            );
            eprintln!("   -> {:?}", row.latency);
            if let Running::TunnelGo { adapter, .. } = &running {
                let timer = adapter.timer.clone();
                let (echo_addr, n) = (echo.addr, cfg.connections);
                let timed = tokio::task::spawn_blocking(move || timer.run(echo_addr, n))
                    .await
                    .context("Go timing task")?;
                eprintln!("   -> timed in grpc-go: {timed:?}");
                row.notes.push(match timed {
                    Ok(t) => format!(
                        "{n} sequential dials timed inside grpc-go (no adapter hop): p50 {:.0} µs, p99 {:.0} µs",
                        t.p50_us, t.p99_us
                    ),
                    Err(e) => format!("timing dials inside grpc-go failed: {e:#}"),
                });
            }
        }
        if has(Phase::Single) {
            eprintln!("   1 stream: {} bytes", cfg.bytes);
            row.single = Outcome::from_result(
                bounded(
                    cfg.limit,
                    measure::throughput(&dialer, 1, cfg.bytes, &pids, cfg.limit),
                )
                .await,
            );
            eprintln!("   -> {:?}", row.single);
        }
        if has(Phase::Download) {
            eprintln!("   1 stream down: {} bytes", cfg.bytes);
            row.download = Outcome::from_result(
                bounded(
                    cfg.limit,
                    measure::download(&dialer, cfg.bytes, &pids, cfg.limit),
                )
                .await,
            );
            eprintln!("   -> {:?}", row.download);
        }
        if has(Phase::Multi) {
            eprintln!("   {} streams: {} bytes in total", cfg.streams, cfg.bytes);
            row.multi = Outcome::from_result(
                bounded(
                    cfg.limit,
                    measure::throughput(&dialer, cfg.streams, cfg.bytes, &pids, cfg.limit),
                )
                .await,
            );
            eprintln!("   -> {:?}", row.multi);
        }
        rows.push(row);
        // Stopping waits for processes to exit: keep it off the async workers.
        let keep = cfg.keep;
        tokio::task::spawn_blocking(move || {
            drop(running);
            if keep {
                let kept = dir.keep();
                eprintln!("   logs kept in {}", kept.display());
            }
        })
        .await
        .context("stop task")?;
    }
    Ok(rows)
}

/// A header describing the machine and settings, for the report.
pub fn header(cfg: &Config) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {} ({cores} cores), Linux {}, 1-min load average at the end {}. Payload: {} bytes per throughput run \
         ({} streams share it in the multi-stream run); {} sequential new connections; \
         {} idle connections.",
        sys::cpu_model(),
        kernel.trim(),
        sys::loadavg(),
        cfg.bytes,
        cfg.streams,
        cfg.connections,
        cfg.idle
    )
}
