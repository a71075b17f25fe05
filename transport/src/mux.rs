//! Streams over one byte stream, for the WebSocket transport (yamux).
//!
//! yamux gives per-stream flow control (one slow reader never stalls the
//! others), stream limits and half-close. Its connection must be polled by a
//! single task: [`spawn`] starts that driver and returns a [`MuxHandle`]
//! that opens, accepts and closes streams by message. A stream is shared by
//! its two halves ([`MuxStream`]) so that a reset by the peer, which yamux
//! reports as end-of-data, can still be told from a clean FIN.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead as FAsyncRead, AsyncWrite as FAsyncWrite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::compat::TokioAsyncReadCompatExt;

use crate::stream::StreamError;

/// Most streams (both directions) yamux keeps on one WebSocket connection.
///
/// yamux ends the whole connection when the peer opens one stream past this
/// limit, so it is set far above what a server asks of one agent: the
/// server enforces its own per-node limit (`--max-streams-per-node`) before
/// it opens a stream, and answers 503 there. What a stream costs is memory
/// (yamux state, and up to its 256 KiB window of unread bytes while a reader
/// is slow), not this count.
pub const MAX_STREAMS: usize = 65_536;
/// Receive window over all streams. yamux insists on >= 256 KiB per stream;
/// at exactly that times [`MAX_STREAMS`] its auto-tuning has no room to grow
/// into, so every stream's window stays 256 KiB.
const MAX_CONNECTION_WINDOW: usize = MAX_STREAMS.saturating_mul(256 * 1024);
/// Largest data frame yamux sends on an agent tunnel. yamux takes frames
/// from its streams in turn, so this is what a keystroke may wait behind per
/// busy stream (8 ms at 4 Mbit/s), above the send buffers of `crate::ws`.
pub const EDGE_FRAME_SIZE: usize = 4 * 1024;

/// Which data frame size a multiplexed connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frames {
    /// [`EDGE_FRAME_SIZE`]: agent tunnels, where weak links carry
    /// keystrokes beside bulk transfers.
    Edge,
    /// [`PEER_FRAME_SIZE`], written in one piece: replica peer links on the
    /// cloud's own network, throughput first (the short send queue costs WebSocket
    /// tunnels 20–45 % of their loopback throughput; docs/benchmarks.md).
    Peer,
}
/// Largest data frame on a replica peer link: what the splice reads from a
/// front-end socket at once, so one read is one frame.
const PEER_FRAME_SIZE: usize = 32 * 1024;
/// Write buffer below yamux on a peer link: one frame and its header.
const PEER_WRITE_BUFFER: usize = PEER_FRAME_SIZE + 64;
/// Inbound streams waiting to be accepted before new ones are refused.
const ACCEPT_BACKLOG: usize = 256;

/// Which end of the multiplexer this is (yamux assigns odd/even stream ids).
#[derive(Debug, Clone, Copy)]
pub enum MuxRole {
    /// The agent.
    Client,
    /// The server.
    Server,
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, StreamError>>;

/// A running multiplexed connection.
#[derive(Debug, Clone)]
pub struct MuxHandle {
    open_tx: mpsc::Sender<OpenReply>,
    inbound: Arc<tokio::sync::Mutex<mpsc::Receiver<yamux::Stream>>>,
    close_tx: mpsc::Sender<()>,
    closed: watch::Receiver<Option<String>>,
}

/// Starts the driver task for `io` and returns its handle.
pub fn spawn<T>(io: T, role: MuxRole, frames: Frames) -> MuxHandle
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut cfg = yamux::Config::default();
    // yamux checks the window against the stream count on each call: the
    // window goes first.
    cfg.set_max_connection_receive_window(Some(MAX_CONNECTION_WINDOW))
        .set_max_num_streams(MAX_STREAMS);
    let mode = match role {
        MuxRole::Client => yamux::Mode::Client,
        MuxRole::Server => yamux::Mode::Server,
    };
    match frames {
        Frames::Edge => {
            cfg.set_split_send_size(EDGE_FRAME_SIZE);
            drive(yamux::Connection::new(io.compat(), cfg, mode))
        }
        Frames::Peer => {
            cfg.set_split_send_size(PEER_FRAME_SIZE);
            // yamux writes a frame's 12-byte header and its body separately
            // and flushes after every frame; below TLS each write would be a
            // record and a syscall of its own. Buffered, a frame is one write.
            let io = tokio::io::BufWriter::with_capacity(PEER_WRITE_BUFFER, io);
            drive(yamux::Connection::new(io.compat(), cfg, mode))
        }
    }
}

/// Runs `conn` in its own task: the only place it is polled.
fn drive<T>(mut conn: yamux::Connection<T>) -> MuxHandle
where
    T: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let (open_tx, mut open_rx) = mpsc::channel::<OpenReply>(64);
    let (in_tx, in_rx) = mpsc::channel(ACCEPT_BACKLOG);
    let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
    let (closed_tx, closed) = watch::channel(None);
    tokio::spawn(async move {
        let mut waiting: Option<OpenReply> = None;
        let mut closing = false;
        let reason = poll_fn(|cx| loop {
            if closing {
                return match conn.poll_close(cx) {
                    Poll::Ready(_) => Poll::Ready("closed locally".to_string()),
                    Poll::Pending => Poll::Pending,
                };
            }
            if close_rx.poll_recv(cx).is_ready() {
                closing = true;
                continue;
            }
            if waiting.is_none() {
                if let Poll::Ready(Some(reply)) = open_rx.poll_recv(cx) {
                    waiting = Some(reply);
                }
            }
            if let Some(reply) = waiting.take() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(r) => {
                        let _ = reply.send(r.map_err(|e| match e {
                            yamux::ConnectionError::TooManyStreams => StreamError::Limit(format!(
                                "{MAX_STREAMS} streams are open on this WebSocket connection"
                            )),
                            e => StreamError::ConnectionLost(e.to_string()),
                        }));
                        continue;
                    }
                    Poll::Pending => waiting = Some(reply),
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    if in_tx.try_send(stream).is_err() {
                        tracing::warn!("too many unaccepted streams; resetting a new one");
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
                Poll::Ready(None) => return Poll::Ready("closed by peer".to_string()),
                Poll::Pending => return Poll::Pending,
            }
        })
        .await;
        if let Some(reply) = waiting {
            let _ = reply.send(Err(StreamError::ConnectionLost(reason.clone())));
        }
        let _ = closed_tx.send(Some(reason));
    });
    MuxHandle {
        open_tx,
        inbound: Arc::new(tokio::sync::Mutex::new(in_rx)),
        close_tx,
        closed,
    }
}

impl MuxHandle {
    /// Opens a new stream.
    pub async fn open(&self) -> Result<MuxStream, StreamError> {
        let (tx, rx) = oneshot::channel();
        let lost = || StreamError::ConnectionLost(self.reason());
        self.open_tx.send(tx).await.map_err(|_| lost())?;
        let stream = rx.await.map_err(|_| lost())??;
        Ok(MuxStream::new(stream, self.closed.clone()))
    }

    /// Accepts the next stream the peer opened.
    pub async fn accept(&self) -> Result<MuxStream, StreamError> {
        let mut rx = self.inbound.lock().await;
        match rx.recv().await {
            Some(s) => Ok(MuxStream::new(s, self.closed.clone())),
            None => Err(StreamError::ConnectionLost(self.reason())),
        }
    }

    /// Closes the connection (streams end).
    pub fn close(&self) {
        let _ = self.close_tx.try_send(());
    }

    /// Resolves once the connection is gone, with the reason.
    pub async fn closed(&self) -> String {
        let mut rx = self.closed.clone();
        loop {
            if let Some(r) = rx.borrow().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return "multiplexer stopped".into();
            }
        }
    }

    fn reason(&self) -> String {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "multiplexer stopped".into())
    }
}

/// One yamux stream shared by its send and receive halves.
///
/// A graceful yamux close (ours: revocation, rejection) leaves the local
/// streams' readers and writers waiting forever, so a read or write that
/// would wait also watches the connection's end and fails (`ConnectionAborted`,
/// [`StreamError::ConnectionLost`]) once the driver is gone.
#[derive(Debug)]
pub struct MuxStream {
    inner: Arc<Mutex<yamux::Stream>>,
    sent_fin: Arc<AtomicBool>,
    connection: watch::Receiver<Option<String>>,
    // One watch per direction: the halves are polled by different tasks.
    read_gone: Mutex<GoneWatch>,
    write_gone: Mutex<GoneWatch>,
}

impl Clone for MuxStream {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            sent_fin: self.sent_fin.clone(),
            connection: self.connection.clone(),
            read_gone: Mutex::new(GoneWatch::Idle),
            write_gone: Mutex::new(GoneWatch::Idle),
        }
    }
}

/// Waiting for the connection's end, polled only when an I/O call would wait.
enum GoneWatch {
    Idle,
    Waiting(Pin<Box<dyn Future<Output = String> + Send>>),
    Gone(String),
}

impl std::fmt::Debug for GoneWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GoneWatch::Idle => f.write_str("Idle"),
            GoneWatch::Waiting(_) => f.write_str("Waiting"),
            GoneWatch::Gone(r) => write!(f, "Gone({r:?})"),
        }
    }
}

impl MuxStream {
    fn new(s: yamux::Stream, connection: watch::Receiver<Option<String>>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(s)),
            sent_fin: Arc::new(AtomicBool::new(false)),
            connection,
            read_gone: Mutex::new(GoneWatch::Idle),
            write_gone: Mutex::new(GoneWatch::Idle),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, yamux::Stream> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Pending` while the connection lives (registering `cx`); once it is
    /// gone, the error every waiting I/O call returns.
    fn poll_gone(&self, slot: &Mutex<GoneWatch>, cx: &mut Context<'_>) -> Poll<io::Error> {
        let mut w = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let GoneWatch::Idle = *w {
            let mut rx = self.connection.clone();
            *w = GoneWatch::Waiting(Box::pin(async move {
                match rx.wait_for(Option::is_some).await {
                    Ok(r) => r.clone().unwrap_or_default(),
                    Err(_) => "multiplexer stopped".to_string(),
                }
            }));
        }
        if let GoneWatch::Waiting(f) = &mut *w {
            match f.as_mut().poll(cx) {
                Poll::Ready(reason) => *w = GoneWatch::Gone(reason),
                Poll::Pending => return Poll::Pending,
            }
        }
        match &*w {
            GoneWatch::Gone(reason) => Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("WebSocket tunnel closed: {reason}"),
            )),
            _ => Poll::Pending,
        }
    }

    /// `io`'s result, or the connection's end if `io` would wait.
    fn or_gone<T>(
        &self,
        slot: &Mutex<GoneWatch>,
        cx: &mut Context<'_>,
        io: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match io {
            Poll::Pending => self.poll_gone(slot, cx).map(Err),
            ready => ready,
        }
    }

    /// Polls a read into `buf`. A clean end leaves `buf` unchanged; a peer
    /// reset (which yamux reports as end-of-data) is `ConnectionReset`.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut s = self.lock();
        let polled = Pin::new(&mut *s).poll_read(cx, buf.initialize_unfilled());
        let n = match self.or_gone(&self.read_gone, cx, polled) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 && s.is_closed() && !self.sent_fin.load(Ordering::Acquire) {
            // Closed while our side is still open: the peer reset the stream.
            return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }

    /// Polls a write of (part of) `data`, waiting for the peer's window.
    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.lock()).poll_write(cx, data);
        self.or_gone(&self.write_gone, cx, polled)
    }

    /// Polls queued frames out to the connection.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut *self.lock()).poll_flush(cx);
        self.or_gone(&self.write_gone, cx, polled)
    }

    /// Polls a half-close (FIN).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sent_fin.store(true, Ordering::Release);
        let polled = Pin::new(&mut *self.lock()).poll_close(cx);
        self.or_gone(&self.write_gone, cx, polled)
    }

    /// Next chunk; `Ok(None)` at a clean end; a peer reset is an error.
    pub async fn read_chunk(&self, max: usize) -> Result<Option<Bytes>, StreamError> {
        let mut buf = BytesMut::zeroed(max.min(64 * 1024));
        let n = self.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(buf.freeze()))
    }

    /// Reads into `buf`; 0 at a clean end; a peer reset is an error.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let mut rb = ReadBuf::new(buf);
        poll_fn(|cx| self.poll_read(cx, &mut rb))
            .await
            .map_err(io_err)?;
        Ok(rb.filled().len())
    }

    /// Writes all of `data`, waiting for the peer's window.
    pub async fn write_all(&self, mut data: &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_write(cx, data))
                .await
                .map_err(io_err)?;
            if n == 0 {
                return Err(StreamError::Reset(proto::codes::STREAM_TCP_RESET));
            }
            data = &data[n..];
        }
        poll_fn(|cx| self.poll_flush(cx)).await.map_err(io_err)
    }

    /// Half-close (FIN).
    pub async fn finish(&self) {
        let _ = poll_fn(|cx| self.poll_shutdown(cx)).await;
    }
}

fn io_err(e: io::Error) -> StreamError {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::WriteZero => {
            StreamError::Reset(proto::codes::STREAM_TCP_RESET)
        }
        _ => StreamError::ConnectionLost(e.to_string()),
    }
}

/// Remote address and certificates of the transport under a multiplexer.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    pub certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A client and a server multiplexer over an in-memory pipe, with one
    /// stream open between them.
    async fn pair() -> (MuxHandle, MuxHandle, MuxStream, MuxStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let client = spawn(a, MuxRole::Client, Frames::Edge);
        let server = spawn(b, MuxRole::Server, Frames::Edge);
        let opened = client.open().await.unwrap();
        opened.write_all(b"hi").await.unwrap();
        let accepted = server.accept().await.unwrap();
        let mut buf = [0u8; 2];
        assert_eq!(accepted.read(&mut buf).await.unwrap(), 2);
        (client, server, opened, accepted)
    }

    #[tokio::test]
    async fn closing_the_connection_ends_the_streams_open_on_it() {
        let (_client, server, opened, accepted) = pair().await;
        server.close();
        let mut buf = [0u8; 16];
        let t = std::time::Instant::now();
        let local = tokio::time::timeout(Duration::from_secs(5), accepted.read(&mut buf)).await;
        // Before: a graceful yamux close left this read waiting until some
        // other wake-up (here the 5 s timeout) polled it again.
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "read ended after {:?}: {local:?}",
            t.elapsed()
        );
        assert!(matches!(local, Ok(Err(_))), "{local:?}");
        let write = tokio::time::timeout(Duration::from_secs(2), accepted.write_all(b"x")).await;
        assert!(matches!(write, Ok(Err(_))), "{write:?}");
        // The peer's stream ends too (its connection saw the close).
        let remote = tokio::time::timeout(Duration::from_secs(2), opened.read(&mut buf)).await;
        assert!(matches!(remote, Ok(Ok(0)) | Ok(Err(_))), "{remote:?}");
    }

    #[tokio::test]
    async fn bytes_buffered_before_the_close_are_still_read() {
        let (client, _server, opened, accepted) = pair().await;
        opened.write_all(b"last words").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.close();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 16];
        let n = accepted.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"last words");
    }

    /// Counts the writes that reach the transport under a multiplexer.
    struct CountingWrites {
        io: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut this.io).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    }

    /// Under TLS every write is a record and a syscall: a peer link must hand
    /// each frame, header and body, to its transport as one write.
    #[tokio::test]
    async fn a_peer_link_writes_each_frame_in_one_piece() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = spawn(
            CountingWrites {
                io: a,
                writes: writes.clone(),
            },
            MuxRole::Client,
            Frames::Peer,
        );
        let server = spawn(b, MuxRole::Server, Frames::Peer);
        let opened = client.open().await.unwrap();
        let payload: Vec<u8> = (0..8 * PEER_FRAME_SIZE).map(|i| (i % 251) as u8).collect();
        let before = writes.load(Ordering::Relaxed);
        let sending = async {
            for piece in payload.chunks(PEER_FRAME_SIZE) {
                opened.write_all(piece).await.unwrap();
            }
            opened.finish().await;
        };
        let receiving = async {
            let accepted = server.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match accepted.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        let ((), got) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(sending, receiving)
        })
        .await
        .unwrap();
        assert!(
            got == payload,
            "bytes differ ({} of {})",
            got.len(),
            payload.len()
        );
        // 8 data frames and a FIN, plus the odd window update or ping:
        // unbuffered, the headers alone would be 9 more writes.
        let frame_writes = writes.load(Ordering::Relaxed) - before;
        assert!(
            (8..=12).contains(&frame_writes),
            "{frame_writes} writes for 8 frames"
        );
    }
}
