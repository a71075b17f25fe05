//! Markdown output of `fleet-bench`.

use std::fmt::Write as _;

use super::probe::{Dials, Idle, Registration};
use super::Run;

/// IPv4 + UDP header bytes per datagram, which quinn's counters leave out.
const IP_UDP_HEADER: f64 = 28.0;

fn registration(r: &Registration) -> String {
    if r.complete() {
        format!("{:.1} s", r.secs)
    } else {
        format!(
            "**timeout**: {}/{} after {:.0} s",
            r.registered, r.of, r.secs
        )
    }
}

fn dials(d: &Dials) -> String {
    if d.ok == 0 {
        return format!("none ok ({} failed)", d.failed);
    }
    let failed = if d.failed > 0 {
        format!(", **{} failed**", d.failed)
    } else {
        String::new()
    };
    format!(
        "{:.2} / {:.2} ms ({} dials{failed})",
        d.p50_ms, d.p99_ms, d.ok
    )
}

fn noticed(r: &Run) -> String {
    match (r.noticed_p50, r.noticed_max) {
        (Some(p50), Some(max)) => format!(
            "{:.1} / {:.1} s ({} of {})",
            p50.as_secs_f64(),
            max.as_secs_f64(),
            r.noticed,
            r.agents
        ),
        _ => format!("none of {}", r.agents),
    }
}

/// Bytes per second per agent in each direction: UDP payload, and with
/// IPv4/UDP headers.
fn per_agent(i: &Idle, agents: usize) -> (f64, f64, f64, f64) {
    let div = i.secs * agents.max(1) as f64;
    let w = &i.wire;
    let up = w.tx_bytes as f64 / div;
    let down = w.rx_bytes as f64 / div;
    let up_ip = up + w.tx_datagrams as f64 * IP_UDP_HEADER / div;
    let down_ip = down + w.rx_datagrams as f64 * IP_UDP_HEADER / div;
    (up, down, up_ip, down_ip)
}

/// The results table and a details table (what bounds each number).
pub fn markdown(runs: &[Run], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    out.push_str(
        "| agents | cold start: all registered | server RSS idle | server CPU idle | wire per idle agent, up / down | dial idle p50 / p99 | kill -9: all back | dial during storm p50 / p99 |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let (rss, cpu, wire) = match &r.idle {
            Ok(i) => {
                let (up, down, up_ip, down_ip) = per_agent(i, r.agents);
                (
                    format!("{:.0} MiB", i.rss_kib as f64 / 1024.0),
                    format!("{:.1} %", i.server_cores * 100.0),
                    format!("{up:.1} / {down:.1} B/s ({up_ip:.1} / {down_ip:.1} with IP+UDP)"),
                )
            }
            Err(e) => (format!("failed: {e}"), "—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {rss} | {cpu} | {wire} | {} | {} | {} |",
            r.agents,
            registration(&r.cold),
            dials(&r.idle_dials),
            registration(&r.restart),
            dials(&r.storm_dials),
        );
    }
    out.push_str(
        "\n| agents | server RSS empty → idle (per agent) | datagrams/s per agent up / down | fleet-bench CPU | other load | reconnects while idle | failed attempts | dial max idle / storm | loss noticed after kill -9, median / last |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let (rss, dgrams, bench, other, reconnects) = match &r.idle {
            Ok(i) => {
                let div = i.secs * r.agents.max(1) as f64;
                let per = (i.rss_kib as f64 - i.rss_empty_kib as f64) / r.agents.max(1) as f64;
                (
                    format!(
                        "{:.0} → {:.0} MiB ({per:.1} KiB)",
                        i.rss_empty_kib as f64 / 1024.0,
                        i.rss_kib as f64 / 1024.0
                    ),
                    format!(
                        "{:.2} / {:.2}",
                        i.wire.tx_datagrams as f64 / div,
                        i.wire.rx_datagrams as f64 / div
                    ),
                    format!("{:.2} cores", i.bench_cores),
                    format!("{:.2} cores", i.other_cores),
                    i.reconnects.to_string(),
                )
            }
            Err(_) => ("—".into(), "—".into(), "—".into(), "—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {rss} | {dgrams} | {bench} | {other} | {reconnects} | {} | {:.1} / {:.1} ms | {} |",
            r.agents,
            r.counters.failed_attempts,
            r.idle_dials.max_ms,
            r.storm_dials.max_ms,
            noticed(r),
        );
    }
    let errors: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            [
                r.counters
                    .first_error
                    .as_ref()
                    .map(|e| format!("- {} agents, first failed attempt: {e}", r.agents)),
                r.idle_dials
                    .first_error
                    .as_ref()
                    .map(|e| format!("- {} agents, first failed idle dial: {e}", r.agents)),
                r.storm_dials
                    .first_error
                    .as_ref()
                    .map(|e| format!("- {} agents, first failed storm dial: {e}", r.agents)),
            ]
        })
        .flatten()
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n{}", errors.join("\n"));
    }
    out
}
