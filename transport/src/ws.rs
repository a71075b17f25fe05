//! A WebSocket as a byte stream, so a multiplexer can run over it.
//!
//! Binary messages carry the bytes; pings are answered by tungstenite; a
//! text message is a protocol violation. Message and frame sizes are capped
//! by the tungstenite configuration from [`ws_config`], so a peer cannot make
//! us buffer a huge message.
//!
//! ## The send queue
//!
//! All streams of an agent's WebSocket tunnel share one TCP connection.
//! yamux shares it fairly, one frame per stream in turn, but only up to the
//! point where it hands a frame on: whatever waits below yamux is one FIFO
//! queue in front of every stream's next frame, a keystroke's included. Each
//! piece of that queue is kept small on agent tunnels (both ends):
//! - yamux's frames, [`crate::mux::EDGE_FRAME_SIZE`] (default 16 KiB);
//! - tungstenite's write buffer, [`WRITE_BUFFER`] (default 128 KiB);
//! - rustls's unsent records, [`TLS_SEND_BUFFER`] (default 64 KiB);
//! - the kernel's unsent bytes, [`crate::tunnel_tcp::UNSENT_LIMIT`]
//!   (default: megabytes, the socket buffer).
//!
//! Past them a bulk stream waits in yamux, within its 256 KiB window. On the
//! weak-link bench (16 Mbit/s, 40 ms, 1 % loss, where TCP moves about
//! 4 Mbit/s) the defaults put keystroke echo behind a bulk transfer at
//! p50/p99 387/832 ms, and bounding only the kernel's share changed
//! nothing measurable; with all four it is about 100/190–380 ms.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Path of the agent WebSocket endpoint.
pub const TUNNEL_PATH: &str = "/v1/tunnel";
/// Largest WebSocket message accepted (the multiplexer writes far smaller ones).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest single bytes chunk sent as one message.
const MAX_SEND: usize = 64 * 1024;

/// tungstenite writes its buffered messages out once they reach this many
/// bytes (or on flush, which yamux does whenever it has nothing more to
/// send). A yamux frame header (12 bytes) and its body arrive as two writes;
/// below this size they still leave together.
pub const WRITE_BUFFER: usize = 4 * 1024;

/// The plaintext bytes a tunnel's TLS connection may hold unsent
/// (`rustls::ConnectionCommon::set_buffer_limit`); past it a write waits.
pub const TLS_SEND_BUFFER: usize = 8 * 1024;

/// Keeps an agent tunnel's send queue short below the WebSocket (see "The
/// send queue"): the kernel's share on `tcp`, rustls's on `tls`. Both ends
/// call it once TLS is established.
pub fn keep_send_queue_short<D>(
    tcp: &mut crate::tunnel_tcp::TunnelTcp,
    tls: &mut rustls::ConnectionCommon<D>,
) {
    tcp.keep_queue_short();
    tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
}

/// tungstenite limits for both ends.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(WRITE_BUFFER)
}

/// [`AsyncRead`] + [`AsyncWrite`] over a [`WebSocketStream`].
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsByteStream<S> {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on the tunnel WebSocket",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_SEND);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}
