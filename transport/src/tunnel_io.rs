//! A tunnel stream as one `AsyncRead + AsyncWrite` object.
//!
//! Byte-level splicing works on the two halves directly, but protocol
//! libraries (hyper's HTTP/1 client towards an edge service) want a single
//! I/O object. [`TunnelIo`] joins a [`TunnelSend`] and a [`TunnelRecv`]
//! without copying: it delegates to the transport's own poll functions.
//! `poll_shutdown` is a half-close (FIN), as on a TCP socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::splice::Direction;
use crate::stream::{TunnelRecv, TunnelSend};

/// Called with the bytes moved in each direction (for byte counters).
pub type ByteCounter = Box<dyn Fn(Direction, usize) + Send + Sync>;

/// Both halves of a tunnel stream behind tokio's I/O traits.
pub struct TunnelIo {
    send: TunnelSend,
    recv: TunnelRecv,
    on_bytes: Option<ByteCounter>,
}

impl std::fmt::Debug for TunnelIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelIo")
            .field("send", &self.send)
            .field("recv", &self.recv)
            .finish_non_exhaustive()
    }
}

impl TunnelIo {
    /// Joins the two halves of one stream.
    pub fn new(send: TunnelSend, recv: TunnelRecv) -> Self {
        Self {
            send,
            recv,
            on_bytes: None,
        }
    }

    /// Joins the halves and reports every byte moved to `on_bytes`
    /// (writes are [`Direction::ToTunnel`], reads [`Direction::FromTunnel`]).
    pub fn with_counter(send: TunnelSend, recv: TunnelRecv, on_bytes: ByteCounter) -> Self {
        Self {
            send,
            recv,
            on_bytes: Some(on_bytes),
        }
    }

    /// Splits back into the halves (e.g. to reset the stream).
    pub fn into_parts(self) -> (TunnelSend, TunnelRecv) {
        (self.send, self.recv)
    }

    fn count(&self, dir: Direction, n: usize) {
        if let (Some(f), true) = (&self.on_bytes, n > 0) {
            f(dir, n);
        }
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.recv {
            TunnelRecv::Quic(r) => Pin::new(r).poll_read(cx, buf),
            TunnelRecv::Ws(r) => r.poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = r {
            this.count(Direction::FromTunnel, buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.send {
            TunnelSend::Quic(s) => {
                let r = AsyncWrite::poll_write(Pin::new(s.stream()), cx, buf);
                if let Poll::Ready(Ok(n)) = r {
                    s.sending(n);
                }
                r
            }
            TunnelSend::Ws(s) => s.poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = r {
            this.count(Direction::ToTunnel, n);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().send {
            TunnelSend::Quic(s) => AsyncWrite::poll_flush(Pin::new(s.stream()), cx),
            TunnelSend::Ws(s) => s.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().send {
            TunnelSend::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s.stream()), cx),
            TunnelSend::Ws(s) => s.poll_shutdown(cx),
        }
    }
}
