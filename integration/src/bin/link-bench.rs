//! Weak-link benchmark: the tunnel (QUIC with each congestion controller,
//! WebSocket) and plain TCP side by side on one emulated edge link.
//!
//! ```text
//! cargo build --release -p tunnel-server -p tunnel-agent -p integration
//! sudo target/release/link-bench [--rate-mbit 16] [--rtt-ms 40] [--loss-pct 1] [--paths ...]
//! ```
//!
//! Needs root, iproute2, iptables (with the statistic match and NFQUEUE) and
//! tc with tbf. Prints a Markdown table on stdout; progress goes to stderr.
//! See docs/benchmarks.md ("Weak links") for the method.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use integration::bench;
use integration::netns::{self, NsRuntime};
use integration::weaklink::delay_line::DelayLineProcess;
use integration::weaklink::link::{EmulatedLink, LinkShape, QUEUE};
use integration::weaklink::tunnel::Transport;
use integration::weaklink::{self, Config, EdgeServices, LinkPath};

#[derive(Debug, Parser)]
#[command(about = "The tunnel and plain TCP on an emulated weak link (rate, delay, loss)")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Bottleneck rate each way, Mbit/s.
    #[arg(long, default_value_t = 16.0)]
    rate_mbit: f64,
    /// Round-trip time added by the delay line, ms (half each way).
    #[arg(long, default_value_t = 40)]
    rtt_ms: u64,
    /// Random loss each way, percent.
    #[arg(long, default_value_t = 1.0)]
    loss_pct: f64,
    /// Bottleneck queue each way, bytes (default: one bandwidth-delay product).
    #[arg(long)]
    queue_bytes: Option<u64>,
    /// TCP congestion control at both ends, for plain TCP and WebSocket.
    #[arg(long, default_value = "cubic", value_parser = ["cubic", "reno", "bbr"])]
    tcp_congestion: String,
    /// Bytes per throughput run.
    #[arg(long, default_value_t = 16_000_000)]
    bytes: u64,
    /// Paths (comma-separated): tcp, quic, websocket.
    #[arg(long, value_delimiter = ',', default_value = "tcp,quic,websocket")]
    paths: Vec<String>,
    /// Congestion controllers for the QUIC path (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "loss-tolerant,cubic,newreno,bbr"
    )]
    congestion: Vec<String>,
    /// Keystrokes per echo-under-bulk measurement.
    #[arg(long, default_value_t = 100)]
    keystrokes: usize,
    /// New connections per request-latency measurement.
    #[arg(long, default_value_t = 30)]
    requests: usize,
    /// Upper bound for any single measurement, seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    #[arg(long, default_value = "warn")]
    rust_log: String,
    /// Directory with tunnel-server and tunnel-agent (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep each path's temporary directory (configs, keys, logs).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) the delay line, run inside the wire namespace.
    DelayLine {
        #[arg(long)]
        delay_ms: u64,
        #[arg(long)]
        lifetime_secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if let Some(Cmd::DelayLine {
        delay_ms,
        lifetime_secs,
    }) = a.cmd
    {
        return weaklink::delay_line::run(
            QUEUE,
            Duration::from_millis(delay_ms),
            Duration::from_secs(lifetime_secs),
        );
    }
    if let Some(why) = netns::unavailable_reason() {
        bail!("link-bench needs network namespaces: {why}");
    }
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => bench::procs::workspace_bin_dir()?,
    };
    let rate_bit = (a.rate_mbit * 1e6) as u64;
    let mut shape = LinkShape {
        rate_bit,
        one_way_ms: a.rtt_ms / 2,
        loss: a.loss_pct / 100.0,
        queue_bytes: 0,
        tcp_congestion: match a.tcp_congestion.as_str() {
            "reno" => "reno",
            "bbr" => "bbr",
            _ => "cubic",
        },
    };
    shape.queue_bytes = a
        .queue_bytes
        .unwrap_or_else(|| shape.bdp_bytes().max(16_000));
    let mut paths = Vec::new();
    for p in &a.paths {
        match p.as_str() {
            "tcp" => paths.push(LinkPath::PlainTcp),
            "quic" => {
                for cc in &a.congestion {
                    paths.push(LinkPath::Tunnel(Transport::Quic {
                        congestion: cc.clone(),
                    }));
                }
            }
            "websocket" => paths.push(LinkPath::Tunnel(Transport::WebSocket)),
            other => bail!("unknown path {other:?} (tcp, quic, websocket)"),
        }
    }
    let cfg = Config {
        paths,
        bytes: a.bytes,
        keystrokes: a.keystrokes,
        requests: a.requests,
        limit: Duration::from_secs(a.timeout),
        bin_dir,
        rust_log: a.rust_log,
        keep: a.keep,
    };

    let t0 = Instant::now();
    let link = EmulatedLink::create(shape)?;
    let _delay =
        DelayLineProcess::start(&link, &std::env::current_exe()?, Duration::from_secs(3600))?;
    let edge_rt = NsRuntime::enter(&link.edge_ns)?;
    let tcp_cc = shape.tcp_congestion;
    // The bench itself is the cloud: this thread and the runtime's workers.
    netns::enter_on_this_thread(&link.cloud_ns)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let any: std::net::SocketAddr = "0.0.0.0:0".parse()?;
        let sink = edge_rt
            .spawn(bench::services::sink_server_on(any))
            .await??;
        let echo = edge_rt
            .spawn(async move { bench::services::echo_server_on(any).await.map(|e| e.addr) })
            .await??;
        let meter = edge_rt
            .spawn(weaklink::fairness::Meter::start(any))
            .await??;
        let http = edge_rt
            .spawn(async move { integration::http::web_server_on(&any.to_string()).await })
            .await??;
        let edge = EdgeServices {
            sink,
            echo,
            meter,
            http,
        };
        let mut rows = Vec::new();
        for p in &cfg.paths {
            eprintln!(
                "== {} ({:.0} s)",
                p.label(tcp_cc),
                t0.elapsed().as_secs_f64()
            );
            let run = weaklink::run_path(&cfg, &link, p, &edge, tcp_cc);
            tokio::select! {
                r = run => rows.push(r.with_context(|| format!("starting {}", p.label(tcp_cc)))?),
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }
        anyhow::Ok(rows)
    })?;
    drop(rt);
    drop(edge_rt);
    println!(
        "Link: {} Mbit/s each way, RTT {} ms, {}% random loss each way, bottleneck queue {} bytes each way.\n",
        a.rate_mbit, shape.rtt_ms(), a.loss_pct, shape.queue_bytes
    );
    print!("{}", weaklink::markdown(&rows));
    for r in &rows {
        println!("\n{}: edge-bound bottleneck {}", r.label, r.bottleneck);
    }
    println!("\nRun time: {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
