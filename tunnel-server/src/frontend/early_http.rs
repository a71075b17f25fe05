//! The HTTP proxy's request on a new edge connection goes out with the
//! stream's open, so it costs one round trip over the link, not two.
//!
//! hyper's HTTP/1 client writes a request head and flushes it before it
//! reads anything. [`EarlyIo`] is the edge connection's transport before
//! its tunnel stream exists: it keeps what hyper writes (up to
//! [`MAX_EARLY_BYTES`]) and, at the first flush, dials the target with
//! those bytes as the stream's first bytes
//! ([`Dialer::dial_with_first_bytes`]). The agent reads the open, dials,
//! and hands the request on: the response starts one round trip after the
//! request, where a dial first and the request after its answer took two.
//! From then on the transport is the stream itself.
//!
//! A failed dial fails hyper's read; the status and message a dial before
//! the request would have answered (503 for an unknown node, 502 for a
//! refused port, …) wait in the shared [`DialOutcome`] for the caller.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use proto::DialTarget;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use transport::splice::Direction;
use transport::tunnel_io::TunnelIo;

use crate::dial::{ActiveStream, DialFailure, Dialer, EdgeStream, Frontend};

/// Most request bytes kept for the open; past them the dial starts and
/// further writes wait for it (a large request body then follows the open).
pub const MAX_EARLY_BYTES: usize = 64 * 1024;

/// What the dial an [`EarlyIo`] made came to.
#[derive(Debug, Default)]
pub struct DialOutcome {
    /// The node that carries the stream, once dialed.
    pub node: Option<String>,
    /// The dial's failure: its HTTP status and message.
    pub failure: Option<(u16, String)>,
}

/// A handle on the outcome, shared between the transport and the caller.
pub type SharedOutcome = Arc<Mutex<DialOutcome>>;

type DialFuture = Pin<Box<dyn Future<Output = Result<(EdgeStream, bool), DialFailure>> + Send>>;

enum State {
    /// Keeping hyper's bytes until it flushes.
    Buffering(Vec<u8>),
    /// Dialing with `first` as the stream's first bytes.
    Dialing {
        dial: DialFuture,
        first: Bytes,
    },
    /// The stream; `unsent` is what the peer path left to write first.
    /// Boxed: the stream is far larger than the other states.
    Open {
        io: Box<TunnelIo>,
        unsent: Bytes,
        _active: Box<ActiveStream>,
    },
    Failed,
}

/// An HTTP client connection's transport that dials at its first flush.
pub struct EarlyIo {
    state: State,
    dialer: Arc<Dialer>,
    target: DialTarget,
    outcome: SharedOutcome,
}

impl EarlyIo {
    /// A transport for a connection to `target`, not dialed yet.
    pub fn new(dialer: Arc<Dialer>, target: DialTarget) -> (Self, SharedOutcome) {
        let outcome = SharedOutcome::default();
        let io = Self {
            state: State::Buffering(Vec::new()),
            dialer,
            target,
            outcome: outcome.clone(),
        };
        (io, outcome)
    }

    /// Starts the dial with what was buffered (no-op in any other state).
    fn start_dial(&mut self) {
        let State::Buffering(buf) = &mut self.state else {
            return;
        };
        let first = Bytes::from(std::mem::take(buf));
        let (dialer, target, bytes) = (self.dialer.clone(), self.target.clone(), first.clone());
        let dial = Box::pin(async move {
            dialer
                .dial_with_first_bytes(&target, Frontend::Http, &bytes)
                .await
        });
        self.state = State::Dialing { dial, first };
    }

    /// Drives the dial to the open stream (ready at once when open).
    fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (dial, first) = match &mut self.state {
            State::Open { .. } => return Poll::Ready(Ok(())),
            State::Failed => return Poll::Ready(Err(failed())),
            State::Buffering(_) => {
                self.start_dial();
                return self.poll_open(cx);
            }
            State::Dialing { dial, first } => (dial, first),
        };
        let result = ready!(dial.as_mut().poll(cx));
        let mut outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok((stream, first_sent)) => {
                let EdgeStream {
                    send,
                    recv,
                    stream_id,
                    node,
                    _active,
                } = stream;
                tracing::debug!(%node, stream_id, target = %self.target, first_sent, "edge HTTP connection open");
                let count = self.dialer.byte_counter(&node);
                let unsent = if first_sent {
                    count(Direction::ToTunnel, first.len());
                    Bytes::new()
                } else {
                    first.clone()
                };
                outcome.node = Some(node);
                self.state = State::Open {
                    io: Box::new(TunnelIo::with_counter(send, recv, Box::new(count))),
                    unsent,
                    _active: Box::new(_active),
                };
                // Writes that waited for the stream are polled by this same
                // connection task; have it look again.
                cx.waker().wake_by_ref();
                Poll::Ready(Ok(()))
            }
            Err(e) => {
                outcome.failure = Some((e.http_status(), e.to_string()));
                self.state = State::Failed;
                Poll::Ready(Err(failed()))
            }
        }
    }

    /// Writes what the peer path left unsent before anything else.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let State::Open { io, unsent, .. } = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        while !unsent.is_empty() {
            let n = ready!(Pin::new(&mut **io).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            unsent.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

fn failed() -> io::Error {
    io::Error::other("the dial to the edge service failed")
}

impl AsyncRead for EarlyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Buffering(_) = this.state {
            // Nothing to read before a request went out; the flush that
            // sends it comes from this same task.
            return Poll::Pending;
        }
        ready!(this.poll_open(cx))?;
        // The response cannot come before the request: a write still
        // pending does not block reading.
        if let Poll::Ready(Err(e)) = this.poll_unsent(cx) {
            return Poll::Ready(Err(e));
        }
        match &mut this.state {
            State::Open { io, .. } => Pin::new(&mut **io).poll_read(cx, buf),
            _ => Poll::Ready(Err(failed())),
        }
    }
}

impl AsyncWrite for EarlyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Buffering(buf) = &mut this.state {
            let room = MAX_EARLY_BYTES.saturating_sub(buf.len());
            if room > 0 {
                let n = room.min(data.len());
                buf.extend_from_slice(&data[..n]);
                return Poll::Ready(Ok(n));
            }
        }
        ready!(this.poll_open(cx))?;
        ready!(this.poll_unsent(cx))?;
        match &mut this.state {
            State::Open { io, .. } => Pin::new(&mut **io).poll_write(cx, data),
            _ => Poll::Ready(Err(failed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Buffering(buf) if buf.is_empty() => Poll::Ready(Ok(())),
            State::Buffering(_) => {
                this.start_dial();
                // The bytes are on their way with the open; reading the
                // response drives the dial.
                match this.poll_open(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Ready(Ok(())),
                }
            }
            State::Dialing { .. } => Poll::Ready(Ok(())),
            State::Failed => Poll::Ready(Err(failed())),
            State::Open { .. } => {
                ready!(this.poll_unsent(cx))?;
                match &mut this.state {
                    State::Open { io, .. } => Pin::new(&mut **io).poll_flush(cx),
                    _ => Poll::Ready(Err(failed())),
                }
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Open { .. } => {
                ready!(this.poll_unsent(cx))?;
                match &mut this.state {
                    State::Open { io, .. } => Pin::new(&mut **io).poll_shutdown(cx),
                    _ => Poll::Ready(Ok(())),
                }
            }
            // Nothing was sent, or nothing could be: nothing to close.
            _ => Poll::Ready(Ok(())),
        }
    }
}
