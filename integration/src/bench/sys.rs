//! Process accounting from `/proc`: resident memory, CPU time, descendants,
//! and the open-files limit.
//!
//! Memory is read as `VmRSS` because that is what an operator sees in
//! `top`/`kubectl top` and what the OOM killer weighs; shared library pages
//! are included but cancel out, since only differences are reported.

use std::collections::HashMap;

use anyhow::Context;

/// Linux reports `utime`/`stime` in `USER_HZ` ticks, fixed at 100 on every
/// architecture the kernel exports to user space this way.
const USER_HZ: f64 = 100.0;

/// `VmRSS` of one process in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for pid {pid}"))
}

/// `(ppid, utime + stime in seconds)` from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((ppid, (utime + stime) / USER_HZ))
}

/// `roots` and all their living descendants (sshd forks a process per session).
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    // Bounded by the number of processes on the machine.
    while let Some(p) = todo.pop() {
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out
}

/// Summed `VmRSS` (KiB) of `roots` and their descendants.
pub fn tree_rss_kib(roots: &[u32]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for pid in tree(roots) {
        // A process may exit between listing and reading; it no longer counts.
        if let Ok(kib) = rss_kib(pid) {
            sum += kib;
        }
    }
    Ok(sum)
}

/// Summed user+system CPU seconds of `roots` and their descendants.
///
/// Used to say where throughput is bounded: when the tunnel processes burn
/// close to 2 CPU-seconds per wall second on a 2-core machine, the limit is
/// CPU (crypto, copies, syscalls), not the protocol.
pub fn tree_cpu_secs(roots: &[u32]) -> f64 {
    tree(roots)
        .iter()
        .filter_map(|&p| stat(p))
        .map(|(_, s)| s)
        .sum()
}

/// CPU seconds of this process (the bench's own clients and services).
pub fn self_cpu_secs() -> f64 {
    stat(std::process::id()).map(|(_, s)| s).unwrap_or(0.0)
}

/// Busy CPU seconds of the whole machine (all cores) since boot, from
/// `/proc/stat`. Subtracting what the bench and the path used tells how much
/// *other* work shared the CPUs during a run: on a shared machine that is the
/// first thing to check before trusting a number.
pub fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // Fields: user nice system idle iowait irq softirq steal guest guest_nice.
    // Counted: user + nice + system (what processes use, including ours) and
    // steal (a hypervisor giving our cores to someone else). Not counted:
    // irq and softirq, because on loopback the kernel's packet processing
    // for the path under test runs there without being charged to any
    // process, so it would show up as "other" load. guest time is already
    // inside user.
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let busy = at(0) + at(1) + at(2) + at(7);
    busy / USER_HZ
}

/// CPU counters at one instant, to split a phase's CPU use between the
/// path under test, the bench itself, and everything else on the machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    path: f64,
    bench: f64,
    machine: f64,
    at: std::time::Instant,
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// CPU seconds of the path's processes.
    pub path: f64,
    /// CPU seconds of this process.
    pub bench: f64,
    /// Average number of cores busy with anything else.
    pub other_cores: f64,
}

impl CpuSnapshot {
    pub fn take(pids: &[u32]) -> Self {
        Self {
            path: tree_cpu_secs(pids),
            bench: self_cpu_secs(),
            machine: machine_busy_secs(),
            at: std::time::Instant::now(),
        }
    }

    /// What was used since `self`, by the same `pids`.
    pub fn since(&self, pids: &[u32]) -> CpuUse {
        let now = Self::take(pids);
        let path = now.path - self.path;
        let bench = now.bench - self.bench;
        let secs = now.at.duration_since(self.at).as_secs_f64().max(1e-9);
        CpuUse {
            path,
            bench,
            other_cores: ((now.machine - self.machine - path - bench) / secs).max(0.0),
        }
    }
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Raises the soft open-files limit to at least `want` (bounded by the hard
/// limit). Children inherit it, which matters for `ssh`, which holds one
/// socket per forwarded connection. Returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft >= want {
        return Ok(soft);
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).context("setrlimit RLIMIT_NOFILE")?;
    Ok(new)
}

/// A short description of the CPU, for the report header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
