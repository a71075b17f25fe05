//! The emulated link's propagation delay: a user-space delay line on an
//! NFQUEUE (this kernel has no `sch_netem`).
//!
//! The kernel hands every forwarded packet to the queue; the delay line
//! holds its verdict for the one-way delay and then accepts it, so the packet
//! continues (to the egress `tbf`) exactly `delay` later. Only metadata is
//! copied to user space; the packet itself stays in the kernel.
//!
//! [`DelayFifo`] is the whole decision (which held packets are due), pure and
//! unit-tested; [`run`] is the I/O around it, run inside the wire namespace
//! by `link-bench delay-line`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::link::EmulatedLink;

/// Items held for a fixed delay, released in arrival order.
///
/// With one delay for every item, arrival order is release order, so a
/// FIFO is the whole schedule.
#[derive(Debug)]
pub struct DelayFifo<T> {
    delay: Duration,
    held: VecDeque<(Instant, T)>,
}

impl<T> DelayFifo<T> {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            held: VecDeque::new(),
        }
    }

    /// Holds `item`, which arrived at `now`.
    pub fn push(&mut self, now: Instant, item: T) {
        self.held.push_back((now + self.delay, item));
    }

    /// The next held item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.held.front() {
            Some((due, _)) if *due <= now => self.held.pop_front().map(|(_, item)| item),
            _ => None,
        }
    }

    /// When the oldest held item is due, if any is held.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// How long the loop sleeps at most when nothing is due: the delay line's
/// timing resolution (plus the scheduler's wake-up latency).
const POLL: Duration = Duration::from_micros(200);

/// Packets the kernel may queue for us before it drops (a 16 Mbit/s link
/// with 20 ms one-way delay holds ~30 packets; this leaves room for 1 Gbit/s).
const QUEUE_MAX_LEN: u32 = 8192;

/// Binds NFQUEUE `queue` (in the calling process's network namespace),
/// prints `ready` on stdout, then delays every packet by `delay` until
/// `lifetime` has passed.
pub fn run(queue: u16, delay: Duration, lifetime: Duration) -> anyhow::Result<()> {
    let mut q = nfq::Queue::open().context("opening the netfilter queue socket")?;
    q.bind(queue)
        .with_context(|| format!("binding NFQUEUE {queue}"))?;
    q.set_copy_range(queue, 0).context("copy range")?;
    q.set_queue_max_len(queue, QUEUE_MAX_LEN)
        .context("queue length")?;
    q.set_nonblocking(true);
    println!("ready");
    let end = Instant::now() + lifetime;
    let mut fifo = DelayFifo::new(delay);
    while Instant::now() < end {
        let mut busy = false;
        loop {
            match q.recv() {
                Ok(msg) => {
                    fifo.push(Instant::now(), msg);
                    busy = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving from NFQUEUE"),
            }
        }
        let now = Instant::now();
        while let Some(mut msg) = fifo.pop_due(now) {
            msg.set_verdict(nfq::Verdict::Accept);
            q.verdict(msg).context("sending a verdict")?;
            busy = true;
        }
        if !busy {
            let wait = fifo
                .next_due()
                .map_or(POLL, |due| due.saturating_duration_since(now).min(POLL));
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// The delay line as a process of its own, killed on drop.
pub struct DelayLineProcess(Child);

impl DelayLineProcess {
    /// Runs `link_bench delay-line` (the `link-bench` executable) in the
    /// link's wire namespace and waits until it is bound to the queue.
    pub fn start(
        link: &EmulatedLink,
        link_bench: &Path,
        lifetime: Duration,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &link.wire_ns])
            .arg(link_bench)
            .args([
                "delay-line",
                &format!("--delay-ms={}", link.shape.one_way_ms),
                &format!("--lifetime-secs={}", lifetime.as_secs()),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the delay line")?;
        let out = child.stdout.take().context("delay line stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("the delay line did not start (see its error above)");
        }
        Ok(Self(child))
    }
}

impl Drop for DelayLineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_in_order_exactly_after_the_delay() {
        let d = Duration::from_millis(20);
        let t0 = Instant::now();
        let mut f = DelayFifo::new(d);
        f.push(t0, 1);
        f.push(t0 + Duration::from_millis(5), 2);
        assert_eq!(f.pop_due(t0 + Duration::from_millis(19)), None);
        assert_eq!(f.next_due(), Some(t0 + d));
        assert_eq!(f.pop_due(t0 + d), Some(1));
        assert_eq!(f.pop_due(t0 + d), None, "the second is due 5 ms later");
        assert_eq!(f.pop_due(t0 + Duration::from_millis(25)), Some(2));
        assert!(f.is_empty());
        assert_eq!(f.next_due(), None);
    }

    #[test]
    fn a_late_poll_releases_everything_due_in_arrival_order() {
        let t0 = Instant::now();
        let mut f = DelayFifo::new(Duration::from_millis(1));
        for i in 0..5 {
            f.push(t0 + Duration::from_micros(i * 10), i);
        }
        let late = t0 + Duration::from_secs(1);
        let out: Vec<_> = std::iter::from_fn(|| f.pop_due(late)).collect();
        assert_eq!(out, vec![0, 1, 2, 3, 4]);
        assert_eq!(f.len(), 0);
    }
}
