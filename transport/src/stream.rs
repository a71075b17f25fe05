//! One tunneled connection's two halves, independent of the transport.
//!
//! QUIC streams are the first implementation; the WebSocket transport adds a
//! variant here, and everything above (splice, front ends, dialer) stays the
//! same. Enum dispatch keeps it allocation-free and easy to follow.

use std::io;
use std::time::Instant;

use bytes::Bytes;
use quinn::VarInt;

use crate::schedule::{Class, Classifier, CONTROL_PRIORITY};

/// Largest chunk handed up from a receive half at once.
pub const MAX_CHUNK: usize = 64 * 1024;

/// The sending half of a tunnel stream.
#[derive(Debug)]
pub enum TunnelSend {
    Quic(QuicSend),
    Ws(crate::mux::MuxStream),
}

/// A QUIC send stream and its scheduling class (see [`crate::schedule`]).
#[derive(Debug)]
pub struct QuicSend {
    stream: quinn::SendStream,
    classifier: Classifier,
    /// Sending its open or dial result: [`CONTROL_PRIORITY`], whatever it sends.
    control: bool,
}

impl QuicSend {
    fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            classifier: Classifier::default(),
            control: false,
        }
    }

    /// The quinn stream, to write to directly (report what was written
    /// with [`QuicSend::sending`]).
    pub fn stream(&mut self) -> &mut quinn::SendStream {
        &mut self.stream
    }

    /// Classifies `bytes` written (or about to be) and applies a changed class.
    pub fn sending(&mut self, bytes: usize) {
        let changed = self.classifier.on_send(Instant::now(), bytes);
        if let (Some(class), false) = (changed, self.control) {
            let _ = self.stream.set_priority(class.priority());
        }
    }

    fn set_control(&mut self, control: bool) {
        self.control = control;
        let priority = match (control, self.classifier.class()) {
            (true, _) => CONTROL_PRIORITY,
            (false, Some(class)) => class.priority(),
            (false, None) => Class::Interactive.priority(),
        };
        let _ = self.stream.set_priority(priority);
    }

    /// The priority quinn schedules this stream's data at.
    pub fn priority(&self) -> Option<i32> {
        self.stream.priority().ok()
    }
}

/// The receiving half of a tunnel stream.
#[derive(Debug)]
pub enum TunnelRecv {
    Quic(quinn::RecvStream),
    Ws(crate::mux::MuxStream),
}

/// What the peer did to a stream that was not a clean end of data.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer reset (receive side) or stopped (send side) the stream with a code.
    #[error("stream reset by peer (code {0})")]
    Reset(u32),
    /// The whole tunnel connection is gone.
    #[error("tunnel connection lost: {0}")]
    ConnectionLost(String),
    /// No stream can be opened now: the connection is at its stream limit.
    #[error("no stream credit: {0}")]
    Limit(String),
    /// Anything else the transport reported.
    #[error("tunnel stream error: {0}")]
    Other(String),
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::Reset(_) => io::ErrorKind::ConnectionReset,
            StreamError::ConnectionLost(_) => io::ErrorKind::ConnectionAborted,
            StreamError::Limit(_) => io::ErrorKind::WouldBlock,
            StreamError::Other(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

fn code(c: VarInt) -> u32 {
    u32::try_from(c.into_inner()).unwrap_or(u32::MAX)
}

fn quic_conn_err(e: quinn::ConnectionError) -> StreamError {
    StreamError::ConnectionLost(e.to_string())
}

impl TunnelSend {
    /// Sends a chunk, waiting for flow-control credit.
    pub async fn write_chunk(&mut self, data: Bytes) -> Result<(), StreamError> {
        match self {
            TunnelSend::Quic(s) => {
                s.sending(data.len());
                s.stream.write_chunk(data).await.map_err(|e| match e {
                    quinn::WriteError::Stopped(c) => StreamError::Reset(code(c)),
                    quinn::WriteError::ConnectionLost(c) => quic_conn_err(c),
                    other => StreamError::Other(other.to_string()),
                })
            }
            TunnelSend::Ws(s) => s.write_all(&data).await,
        }
    }

    /// Sends all of `data` (used for small control frames).
    pub async fn write_all(&mut self, data: &[u8]) -> Result<(), StreamError> {
        self.write_chunk(Bytes::copy_from_slice(data)).await
    }

    /// Half-close: no more data from us (TCP FIN). Idempotent.
    pub async fn finish(&mut self) {
        match self {
            TunnelSend::Quic(s) => {
                let _ = s.stream.finish();
            }
            TunnelSend::Ws(s) => s.finish().await,
        }
    }

    /// Half-closes and waits (up to `limit`) until the peer has received
    /// everything, e.g. before closing a connection after a final frame.
    pub async fn finish_and_wait(&mut self, limit: std::time::Duration) {
        match self {
            TunnelSend::Quic(s) => {
                let _ = s.stream.finish();
                let _ = tokio::time::timeout(limit, s.stream.stopped()).await;
            }
            // yamux has no delivery acknowledgement; the FIN is queued in order.
            TunnelSend::Ws(s) => {
                let _ = tokio::time::timeout(limit, s.finish()).await;
            }
        }
    }

    /// From here until [`TunnelSend::data_phase`], this stream's frames go
    /// out ahead of every data stream ([`crate::schedule`]), so a new dial
    /// is never queued behind another stream's bulk data.
    pub fn control_phase(&mut self) {
        if let TunnelSend::Quic(s) = self {
            s.set_control(true);
        }
    }

    /// Back to data: scheduled by what the stream sends (interactive until
    /// it sends like a bulk transfer). yamux has no priorities; its queue is
    /// kept short instead.
    pub fn data_phase(&mut self) {
        if let TunnelSend::Quic(s) = self {
            s.set_control(false);
        }
    }

    /// Abort our direction with an application code (TCP RST semantics).
    pub fn reset(&mut self, code: u32) {
        match self {
            TunnelSend::Quic(s) => {
                let _ = s.stream.reset(VarInt::from_u32(code));
            }
            // yamux resets a stream that is dropped while open; both halves
            // are dropped right after a reset.
            TunnelSend::Ws(_) => {}
        }
    }
}

impl TunnelRecv {
    /// Next chunk of data; `Ok(None)` is a clean end (the peer half-closed).
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        match self {
            TunnelRecv::Quic(r) => match r.read_chunk(MAX_CHUNK, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(quinn::ReadError::Reset(c)) => Err(StreamError::Reset(code(c))),
                Err(quinn::ReadError::ConnectionLost(c)) => Err(quic_conn_err(c)),
                Err(other) => Err(StreamError::Other(other.to_string())),
            },
            TunnelRecv::Ws(s) => s.read_chunk(MAX_CHUNK).await,
        }
    }

    /// Reads into `buf`, returning 0 at a clean end. Used for control frames,
    /// where reading exactly to a frame boundary matters.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        match self {
            TunnelRecv::Quic(r) => match r.read(buf).await {
                Ok(n) => Ok(n.unwrap_or(0)),
                Err(quinn::ReadError::Reset(c)) => Err(StreamError::Reset(code(c))),
                Err(quinn::ReadError::ConnectionLost(c)) => Err(quic_conn_err(c)),
                Err(other) => Err(StreamError::Other(other.to_string())),
            },
            TunnelRecv::Ws(s) => s.read(buf).await,
        }
    }

    /// Tell the peer we will not read any more (it sees its sends stopped).
    pub fn stop(&mut self, code: u32) {
        match self {
            TunnelRecv::Quic(r) => {
                let _ = r.stop(VarInt::from_u32(code));
            }
            TunnelRecv::Ws(_) => {}
        }
    }
}

/// Which transport carries a tunnel connection (a label in `/agents` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Quic,
    Websocket,
}

impl TransportKind {
    /// Every transport, for exporting a zero gauge for the ones not in use.
    pub const ALL: &'static [TransportKind] = &[TransportKind::Quic, TransportKind::Websocket];

    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Websocket => "websocket",
        }
    }
}

/// One agent↔server connection that carries many streams.
#[derive(Debug, Clone)]
pub enum TunnelConnection {
    Quic(quinn::Connection),
    /// yamux over WebSocket over TLS over TCP.
    Ws {
        mux: crate::mux::MuxHandle,
        peer: crate::mux::PeerInfo,
    },
}

impl TunnelConnection {
    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            TunnelConnection::Quic(_) => TransportKind::Quic,
            TunnelConnection::Ws { .. } => TransportKind::Websocket,
        }
    }

    /// Opens a new bidirectional stream. Fails at once with
    /// [`StreamError::Limit`] when the peer's stream credit is used up,
    /// instead of waiting until some other stream closes.
    pub async fn open_stream(&self) -> Result<(TunnelSend, TunnelRecv), StreamError> {
        match self {
            TunnelConnection::Quic(c) => {
                // quinn takes a stream id from the credit synchronously; a
                // pending open means there is none.
                let opened = futures::FutureExt::now_or_never(c.open_bi()).ok_or_else(|| {
                    StreamError::Limit(
                        "the peer's QUIC stream credit is used up (all its streams are open)"
                            .into(),
                    )
                })?;
                let (s, r) = opened.map_err(quic_conn_err)?;
                Ok((TunnelSend::Quic(QuicSend::new(s)), TunnelRecv::Quic(r)))
            }
            TunnelConnection::Ws { mux, .. } => {
                let s = mux.open().await?;
                Ok((TunnelSend::Ws(s.clone()), TunnelRecv::Ws(s)))
            }
        }
    }

    /// Accepts the next stream the peer opened.
    pub async fn accept_stream(&self) -> Result<(TunnelSend, TunnelRecv), StreamError> {
        match self {
            TunnelConnection::Quic(c) => {
                let (s, r) = c.accept_bi().await.map_err(quic_conn_err)?;
                Ok((TunnelSend::Quic(QuicSend::new(s)), TunnelRecv::Quic(r)))
            }
            TunnelConnection::Ws { mux, .. } => {
                let s = mux.accept().await?;
                Ok((TunnelSend::Ws(s.clone()), TunnelRecv::Ws(s)))
            }
        }
    }

    /// Closes the whole connection with an application code and reason.
    pub fn close(&self, code: u32, reason: &str) {
        match self {
            TunnelConnection::Quic(c) => c.close(VarInt::from_u32(code), reason.as_bytes()),
            TunnelConnection::Ws { mux, .. } => {
                tracing::debug!(code, reason, "closing WebSocket tunnel");
                mux.close()
            }
        }
    }

    /// Resolves when the connection is gone, with a description of why.
    pub async fn closed(&self) -> String {
        match self {
            TunnelConnection::Quic(c) => c.closed().await.to_string(),
            TunnelConnection::Ws { mux, .. } => mux.closed().await,
        }
    }

    /// The certificate chain the peer presented in the TLS handshake.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        match self {
            TunnelConnection::Quic(c) => c
                .peer_identity()
                .and_then(|any| {
                    any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .map(|b| *b),
            TunnelConnection::Ws { peer, .. } => peer.certificates.clone(),
        }
    }

    /// The peer's socket address (after NAT, as the server sees it).
    pub fn remote_address(&self) -> std::net::SocketAddr {
        match self {
            TunnelConnection::Quic(c) => c.remote_address(),
            TunnelConnection::Ws { peer, .. } => peer.remote,
        }
    }
}
