//! `--header-timeout` on `--http-proxy-addr`, separate from keep-alive idling.
//!
//! hyper's own `header_read_timeout` starts when it begins waiting for a
//! request, so it also bounds the idle time between keep-alive requests, and
//! Prometheus reuses one connection per target every scrape interval (15 s
//! to minutes). [`HeadClock`] wraps the client connection and runs two clocks
//! instead: while the connection waits for a request and nothing arrives, the
//! *idle* clock (`--http-proxy-idle-timeout`); from the first byte of a
//! request until hyper has parsed its head and called the service, the *head*
//! clock (`--header-timeout`, as on every other listener). After a CONNECT is
//! upgraded, neither applies (the stream idle timeout does).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the service tells the connection's clock.
#[derive(Debug)]
pub struct HeadState {
    awaiting_head: AtomicBool,
    upgraded: AtomicBool,
    /// Bumped on every transition, so a clock armed earlier is re-decided.
    generation: AtomicU64,
}

impl Default for HeadState {
    fn default() -> Self {
        Self {
            awaiting_head: AtomicBool::new(true),
            upgraded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }
}

impl HeadState {
    /// A head was parsed: the request is being served.
    pub fn begin_request(&self) {
        self.awaiting_head.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The response was written (its body dropped): wait for the next head.
    pub fn end_request(&self) {
        self.awaiting_head.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The connection became a CONNECT tunnel: no more heads.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Which clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
}

/// What to do after a read attempt (sans-IO, unit-tested below).
///
/// `armed` is the clock running since `generation`; returns the clock that
/// should run now and whether it must be restarted.
fn next_phase(
    armed: Option<(Phase, u64)>,
    generation: u64,
    awaiting_head: bool,
    got_bytes: bool,
) -> (Option<Phase>, bool) {
    if !awaiting_head {
        return (None, false);
    }
    let current = armed.filter(|(_, g)| *g == generation).map(|(p, _)| p);
    match (current, got_bytes) {
        (Some(Phase::Head), _) => (Some(Phase::Head), false),
        (_, true) => (Some(Phase::Head), true),
        (Some(Phase::Idle), false) => (Some(Phase::Idle), false),
        (None, false) => (Some(Phase::Idle), true),
    }
}

/// A client connection with the head and idle clocks.
pub struct HeadClock<IO> {
    io: IO,
    state: Arc<HeadState>,
    head_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed: Option<(Phase, u64)>,
}

impl<IO> HeadClock<IO> {
    /// Wraps `io`; `state` is shared with the connection's service.
    pub fn new(
        io: IO,
        state: Arc<HeadState>,
        head_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            io,
            state,
            head_timeout,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
            armed: None,
        }
    }

    fn update(&mut self, got_bytes: bool) {
        let generation = self.state.generation.load(Ordering::Acquire);
        let awaiting = self.state.awaiting_head.load(Ordering::Acquire)
            && !self.state.upgraded.load(Ordering::Acquire);
        match next_phase(self.armed, generation, awaiting, got_bytes) {
            (None, _) => self.armed = None,
            (Some(phase), restart) => {
                if restart {
                    let after = match phase {
                        Phase::Idle => self.idle_timeout,
                        Phase::Head => self.head_timeout,
                    };
                    self.timer.as_mut().reset(Instant::now() + after);
                }
                self.armed = Some((phase, generation));
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeadClock<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let got = buf.filled().len() > before;
                this.update(got);
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.update(false);
                let Some((phase, _)) = this.armed else {
                    return Poll::Pending;
                };
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let what = match phase {
                    Phase::Head => "request head not received within --header-timeout",
                    Phase::Idle => "connection idle for --http-proxy-idle-timeout",
                };
                tracing::debug!(what, "closing --http-proxy-addr client connection");
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HeadClock<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_until_a_byte_then_head_until_served() {
        // Waiting, nothing read: the idle clock starts once.
        assert_eq!(next_phase(None, 0, true, false), (Some(Phase::Idle), true));
        let idle = Some((Phase::Idle, 0));
        assert_eq!(next_phase(idle, 0, true, false), (Some(Phase::Idle), false));
        // The first byte of a head starts the head clock; more bytes do not restart it.
        assert_eq!(next_phase(idle, 0, true, true), (Some(Phase::Head), true));
        let head = Some((Phase::Head, 0));
        assert_eq!(next_phase(head, 0, true, true), (Some(Phase::Head), false));
        assert_eq!(next_phase(head, 0, true, false), (Some(Phase::Head), false));
        // Served (or upgraded): no clock, whatever arrives (bodies, tunnel bytes).
        assert_eq!(next_phase(head, 1, false, true), (None, false));
        // Response done: a new generation waits again from the idle clock.
        assert_eq!(next_phase(head, 2, true, false), (Some(Phase::Idle), true));
    }
}
