//! HTTP bench: Prometheus-style scrapes and small keep-alive requests,
//! direct versus through `--http-proxy-addr` (QUIC and WebSocket), in one run.
//!
//! ```text
//! cargo build --release -p tunnel-server -p tunnel-agent -p integration
//! cargo run --release -p integration --bin http-bench -- [--scrapes N] [--requests N]
//! ```
//!
//! Prints a Markdown table on stdout; progress goes to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use integration::bench::http::{self, Route, Series, METRICS_PAGE_BYTES, SMALL_PAGE_BYTES};
use integration::bench::procs::{self, Tunnel};
use integration::process::free_port;

#[derive(Debug, Parser)]
#[command(about = "Scrape latency (1 MB page) and small-request rate: direct vs tunnel HTTP proxy")]
struct Args {
    /// Sequential scrapes of the 1 MB page timed per path.
    #[arg(long, default_value_t = 100)]
    scrapes: usize,
    /// Small requests per path on one connection (and again spread over --conns).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Connections in the concurrent small-request run.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Directory with tunnel-server and tunnel-agent (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Upper bound for any single measurement, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// One path's results.
struct Row {
    path: &'static str,
    scrape: anyhow::Result<Series>,
    small: anyhow::Result<Series>,
    small_many: anyhow::Result<Series>,
}

/// Runs one measurement, failing it if it takes longer than `limit`.
async fn bounded<T>(
    limit: Duration,
    measurement: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, measurement)
        .await
        .with_context(|| format!("not done within {limit:?}"))?
}

async fn measure(args: &Args, path: &'static str, origin: SocketAddr, route: Route) -> Row {
    let limit = Duration::from_secs(args.timeout);
    eprintln!("== {path}");
    let scrape = bounded(
        limit,
        http::sequential(origin, route, "/metrics", METRICS_PAGE_BYTES, args.scrapes),
    )
    .await;
    eprintln!("   scrape: {:?}", scrape.as_ref().map(|s| s.p50_us));
    let small = bounded(
        limit,
        http::sequential(origin, route, "/small", SMALL_PAGE_BYTES, args.requests),
    )
    .await;
    eprintln!("   small: {:?}", small.as_ref().map(|s| s.per_sec()));
    let per_conn = (args.requests / args.conns.max(1)).max(1);
    let small_many = bounded(
        limit,
        http::concurrent(origin, route, "/small", args.conns.max(1), per_conn),
    )
    .await;
    eprintln!(
        "   small x{}: {:?}",
        args.conns,
        small_many.as_ref().map(|s| s.per_sec())
    );
    Row {
        path,
        scrape,
        small,
        small_many,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => procs::workspace_bin_dir()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let t0 = Instant::now();
    let rows = rt.block_on(async {
        let origin = http::origin_server().await?;
        let mut rows = vec![measure(&args, "direct", origin, Route::Direct).await];
        for (path, agent_args) in [
            ("tunnel HTTP proxy (QUIC)", vec![]),
            (
                "tunnel HTTP proxy (WebSocket)",
                vec!["--transport=websocket".to_string()],
            ),
        ] {
            let dir = tempfile::tempdir()?;
            let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let server_args = vec![format!("--http-proxy-addr={proxy}")];
            let (bin, d) = (bin_dir.clone(), dir.path().to_path_buf());
            let tunnel = tokio::task::spawn_blocking(move || {
                Tunnel::start(&bin, &d, &[origin], "warn", &server_args, &agent_args)
            })
            .await??;
            rows.push(measure(&args, path, origin, Route::Proxy(proxy)).await);
            tokio::task::spawn_blocking(move || drop(tunnel)).await?;
        }
        anyhow::Ok(rows)
    })?;
    println!(
        "Machine: {} ({} cores), 1-min load average at the end {}. {} scrapes of a {} byte page; {} requests for a {} byte page on 1 connection, and again over {} connections.\n",
        integration::bench::sys::cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        integration::bench::sys::loadavg(),
        args.scrapes,
        METRICS_PAGE_BYTES,
        args.requests,
        SMALL_PAGE_BYTES,
        args.conns
    );
    println!("| path | 1 MB scrape p50 ms | p99 ms | small req/s, 1 conn | p50 µs | p99 µs | small req/s, {} conns | p99 µs |", args.conns);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let ms = |s: &anyhow::Result<Series>, f: fn(&Series) -> f64| {
            s.as_ref()
                .map_or("failed".into(), |s| format!("{:.1}", f(s) / 1000.0))
        };
        let n = |s: &anyhow::Result<Series>, f: fn(&Series) -> f64| {
            s.as_ref()
                .map_or("failed".into(), |s| format!("{:.0}", f(s)))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.path,
            ms(&r.scrape, |s| s.p50_us),
            ms(&r.scrape, |s| s.p99_us),
            n(&r.small, Series::per_sec),
            n(&r.small, |s| s.p50_us),
            n(&r.small, |s| s.p99_us),
            n(&r.small_many, Series::per_sec),
            n(&r.small_many, |s| s.p99_us),
        );
    }
    for r in &rows {
        for (what, s) in [
            ("scrape", &r.scrape),
            ("small", &r.small),
            ("small concurrent", &r.small_many),
        ] {
            if let Err(e) = s {
                println!("\n{} {what} failed: {e:#}", r.path);
            }
        }
    }
    println!("\nRun time: {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
