//! The TCP connection under a whole tunnel (WebSocket transport, peer
//! links), with an optional short send queue for agent tunnels.
//!
//! All streams of such a connection queue in its one socket, so the bytes
//! the kernel holds unsent sit in front of every keystroke. Linux grows that
//! queue to megabytes for a bulk transfer. [`TunnelTcp::keep_queue_short`]
//! bounds it in two steps:
//! - `TCP_NOTSENT_LOWAT` ([`UNSENT_LIMIT`]): the socket takes no more while
//!   this much is unsent;
//! - `MSG_EOR` on every write: Linux checks the low-water mark only when it
//!   starts a new segment buffer, and until then appends later writes to the
//!   last queued one, up to the GSO size (64 KB; `ss` showed 20–65 KB unsent
//!   under a 16 KiB mark on the weak-link bench). An end of record closes the
//!   buffer (`tcp_skb_can_collapse_to`), so the next write meets the mark.
//!   Writes are TLS records, so segments stay full-sized.
//!
//! Unsent bytes then stay within the mark plus one write. This costs
//! throughput on fast links (more, smaller wake-ups and writes), so replica
//! peer links, on the cloud's own network, keep the kernel's defaults.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes an agent tunnel's socket keeps unsent beyond what the
/// congestion window lets out: 4 ms at 2 MB/s, 0.2 s at 40 KB/s.
pub const UNSENT_LIMIT: u32 = 8 * 1024;

/// A [`TcpStream`] whose writes can end records; reads are unchanged.
#[derive(Debug)]
pub struct TunnelTcp {
    tcp: TcpStream,
    send_flags: libc::c_int,
}

impl TunnelTcp {
    /// Plain writes, the kernel's queue as it is.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            send_flags: libc::MSG_NOSIGNAL,
        }
    }

    /// Bounds the unsent bytes (see the module docs): for agent tunnels.
    pub fn keep_queue_short(&mut self) {
        let sock = socket2::SockRef::from(&self.tcp);
        if let Err(e) = sock.set_tcp_notsent_lowat(UNSENT_LIMIT) {
            tracing::debug!(error = %e, "could not limit unsent bytes (TCP_NOTSENT_LOWAT)");
        }
        self.send_flags = libc::MSG_NOSIGNAL | libc::MSG_EOR;
    }

    /// The socket, for its addresses and options.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        send: impl Fn(socket2::SockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_io(Interest::WRITABLE, || {
                send(socket2::SockRef::from(&self.tcp))
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

impl AsyncRead for TunnelTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let flags = self.send_flags;
        self.poll_send(cx, |s| s.send_with_flags(buf, flags))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let flags = self.send_flags;
        self.poll_send(cx, |s| s.send_vectored_with_flags(bufs, flags))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl crate::socket::AbortOnDrop for TunnelTcp {
    fn abort_on_drop(&self) -> io::Result<()> {
        self.tcp.abort_on_drop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_and_half_close_pass_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TunnelTcp::new(TcpStream::connect(addr).await.unwrap());
            c.keep_queue_short();
            let a = [7u8; 100_000];
            let b = [9u8; 5];
            c.write_all_buf(&mut &a[..]).await.unwrap();
            let slices = [IoSlice::new(&b), IoSlice::new(&b)];
            let n = c.write_vectored(&slices).await.unwrap();
            c.write_all(&[9u8; 10][n..]).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100_010);
        assert!(got[..100_000].iter().all(|&x| x == 7));
        assert!(got[100_000..].iter().all(|&x| x == 9));
        s.write_all(b"done").await.unwrap();
        drop(s);
        assert_eq!(client.await.unwrap(), b"done");
    }
}
