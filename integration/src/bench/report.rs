//! Markdown output.

use std::fmt::Write as _;

use super::measure::{IdleMemory, Latency, Throughput};

/// A measurement that was done, failed, or does not apply to a path.
#[derive(Debug, Clone)]
pub enum Outcome<T> {
    Done(T),
    Failed(String),
    /// Not meaningful for this path, or phase not selected.
    Skipped,
}

impl<T> Outcome<T> {
    pub fn from_result(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(v) => Outcome::Done(v),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn cell(&self, f: impl Fn(&T) -> String) -> String {
        match self {
            Outcome::Done(v) => f(v),
            Outcome::Failed(_) => "failed".into(),
            Outcome::Skipped => "—".into(),
        }
    }
}

/// Everything measured on one path.
#[derive(Debug, Clone)]
pub struct Row {
    pub path: String,
    /// Encryption on the hop that crosses the network (cipher or protocol).
    pub crypto: String,
    /// Why the whole path did not run (not installed, failed to start).
    pub unavailable: Option<String>,
    pub single: Outcome<Throughput>,
    /// One stream edge → cloud.
    pub download: Outcome<Throughput>,
    pub multi: Outcome<Throughput>,
    pub latency: Outcome<Latency>,
    pub idle: Outcome<IdleMemory>,
    /// Path-specific findings, listed under the tables.
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(path: &str, crypto: &str) -> Self {
        Self {
            path: path.into(),
            crypto: crypto.into(),
            unavailable: None,
            single: Outcome::Skipped,
            download: Outcome::Skipped,
            multi: Outcome::Skipped,
            latency: Outcome::Skipped,
            idle: Outcome::Skipped,
            notes: Vec::new(),
        }
    }
}

fn f0(v: f64) -> String {
    format!("{v:.0}")
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

/// The results table plus a details table and any failures.
pub fn markdown(rows: &[Row], streams: usize, idle: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| path | encryption | 1 stream MB/s | 1 stream down MB/s | {streams} streams MB/s | new conn p50 µs | new conn p99 µs | idle KiB/conn ({idle}) |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        if r.unavailable.is_some() {
            let _ = writeln!(
                s,
                "| {} | {} | n/a | n/a | n/a | n/a | n/a | n/a |",
                r.path, r.crypto
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.path,
            r.crypto,
            r.single.cell(|t| f0(t.mb_per_s)),
            r.download.cell(|t| f0(t.mb_per_s)),
            r.multi.cell(|t| f0(t.mb_per_s)),
            r.latency.cell(|l| f0(l.p50_us)),
            r.latency.cell(|l| f0(l.p99_us)),
            r.idle.cell(|m| f1(m.kib_per_conn)),
        );
    }

    let _ = writeln!(s, "\nDetails (CPU = user+system seconds per GB delivered; \"path\" = the processes under test, \"bench\" = senders + sink in this process; \"other load\" = CPU used by anything else on the machine during the run, in cores):\n");
    let _ = writeln!(
        s,
        "| path | 1 stream s | 1 stream CPU path/bench s/GB | 1 stream down CPU path/bench s/GB | {streams} streams CPU path/bench s/GB | other load (cores) 1 / {streams} streams / latency | new conn max µs | RSS before → with idle conns KiB |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.unavailable.is_none()) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
            r.path,
            r.single.cell(|t| format!("{:.2}", t.secs)),
            r.single
                .cell(|t| format!("{:.2} / {:.2}", t.path_cpu_per_gb, t.bench_cpu_per_gb)),
            r.download
                .cell(|t| format!("{:.2} / {:.2}", t.path_cpu_per_gb, t.bench_cpu_per_gb)),
            r.multi
                .cell(|t| format!("{:.2} / {:.2}", t.path_cpu_per_gb, t.bench_cpu_per_gb)),
            r.single.cell(|t| format!("{:.2}", t.other_cores)),
            r.multi.cell(|t| format!("{:.2}", t.other_cores)),
            r.latency.cell(|l| format!("{:.2}", l.other_cores)),
            r.latency.cell(|l| f0(l.max_us)),
            r.idle
                .cell(|m| format!("{} → {}", m.before_kib, m.after_kib)),
        );
    }

    let mut notes = Vec::new();
    for r in rows {
        if let Some(why) = &r.unavailable {
            notes.push(format!("- {}: not run: {why}", r.path));
        }
        notes.extend(r.notes.iter().map(|n| format!("- {}: {n}", r.path)));
        for (what, o) in [
            ("1 stream", r.single.as_err()),
            ("1 stream down", r.download.as_err()),
            ("multi stream", r.multi.as_err()),
            ("latency", r.latency.as_err()),
            ("idle memory", r.idle.as_err()),
        ] {
            if let Some(e) = o {
                notes.push(format!("- {} {what} failed: {e}", r.path));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\n{}", notes.join("\n"));
    }
    s
}

impl<T> Outcome<T> {
    fn as_err(&self) -> Option<&str> {
        match self {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}
