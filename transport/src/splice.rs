//! Joins a local byte stream (TCP, Unix socket, TLS) to a tunnel stream.
//!
//! The two directions run independently so TCP half-close survives the
//! tunnel: EOF on one side becomes FIN on the other while the opposite
//! direction keeps flowing (`kubectl exec` with stdin closed still gets its
//! output). An abnormal end in either direction (TCP RST, QUIC reset,
//! connection loss) aborts both, and the caller learns which side broke so it
//! can reset the local TCP socket in turn.

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::stream::{StreamError, TunnelRecv, TunnelSend};

/// Read size for the local side; also the most we buffer per direction.
const LOCAL_READ_CHUNK: usize = 32 * 1024;

/// Which way bytes moved, for byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local socket → tunnel.
    ToTunnel,
    /// Tunnel → local socket.
    FromTunnel,
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both directions reached EOF.
    Clean,
    /// The local socket was reset or failed; the tunnel stream was reset.
    LocalReset,
    /// The tunnel peer reset or stopped the stream; reset the local socket.
    TunnelReset,
    /// The tunnel connection died; reset the local socket.
    TunnelLost,
    /// No byte moved either way for the idle timeout; the tunnel stream was
    /// reset and the local socket should be too.
    Idle,
}

/// Byte totals and the way the splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceOutcome {
    pub to_tunnel: u64,
    pub from_tunnel: u64,
    pub end: SpliceEnd,
}

fn stream_end(e: &StreamError) -> SpliceEnd {
    match e {
        StreamError::Reset(_) => SpliceEnd::TunnelReset,
        StreamError::ConnectionLost(_) | StreamError::Limit(_) | StreamError::Other(_) => {
            SpliceEnd::TunnelLost
        }
    }
}

/// What one read from a tunnel stream gives.
type ChunkResult = Result<Option<Bytes>, StreamError>;

/// Most bytes gathered into one local write.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Gathers chunks that are already buffered behind `first` (up to
/// [`COALESCE_LIMIT`]) so the local socket gets one write instead of one per
/// QUIC packet (~1.4 KB): that per-packet write was the agent's main cost.
/// Chunks are polled once, never awaited; an end or error met on the way is
/// returned to be handled after the gathered bytes are written.
fn coalesce(recv: &mut TunnelRecv, first: Bytes) -> (Bytes, Option<ChunkResult>) {
    // yamux reads already copy everything buffered, up to 64 KiB.
    if first.len() >= COALESCE_LIMIT || matches!(recv, TunnelRecv::Ws(_)) {
        return (first, None);
    }
    let mut gathered: Option<BytesMut> = None;
    let mut len = first.len();
    while len < COALESCE_LIMIT {
        match recv.read_chunk().now_or_never() {
            None => break,
            Some(Ok(Some(more))) => {
                let buf = gathered.get_or_insert_with(|| {
                    let mut b = BytesMut::with_capacity(COALESCE_LIMIT + more.len());
                    b.extend_from_slice(&first);
                    b
                });
                buf.extend_from_slice(&more);
                len = buf.len();
            }
            Some(end) => {
                let bytes = gathered.map_or(first, BytesMut::freeze);
                return (bytes, Some(end));
            }
        }
    }
    (gathered.map_or(first, BytesMut::freeze), None)
}

/// A tunnel receive half read in gathered runs: each read returns the next
/// chunk together with every chunk already buffered behind it (up to
/// [`COALESCE_LIMIT`]), and an end or error met while gathering comes with
/// the read after. The splice writes each run to its local socket at once;
/// the gRPC front end sends each as one DATA message (one per ~1.4 KB QUIC
/// packet cost grpc-go, i.e. kube-apiserver, a decode each).
pub struct Gathering<'a> {
    recv: &'a mut TunnelRecv,
    /// What gathering met after the bytes it returned.
    pending: Option<ChunkResult>,
}

impl<'a> Gathering<'a> {
    pub fn new(recv: &'a mut TunnelRecv) -> Self {
        Self {
            recv,
            pending: None,
        }
    }

    /// The next run of bytes; `Ok(None)` at the peer's FIN. Cancel-safe: the
    /// only await is the first chunk's read, and gathering never waits.
    pub async fn next(&mut self) -> ChunkResult {
        if let Some(end) = self.pending.take() {
            return end;
        }
        match self.recv.read_chunk().await {
            Ok(Some(first)) => {
                let (bytes, end) = coalesce(self.recv, first);
                self.pending = end;
                Ok(Some(bytes))
            }
            other => other,
        }
    }

    /// Stops the receive half (see [`TunnelRecv::stop`]).
    pub fn stop(&mut self, code: u32) {
        self.recv.stop(code);
    }
}

/// Copies bytes both ways until both directions end or one aborts.
///
/// `on_bytes` is called as data moves (for live metrics). The local stream is
/// borrowed so the caller can still reset it (e.g. `SO_LINGER 0`) afterwards.
pub async fn splice<L, F>(
    local: &mut L,
    send: TunnelSend,
    recv: TunnelRecv,
    on_bytes: F,
) -> SpliceOutcome
where
    L: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Direction, usize),
{
    splice_with_idle(local, send, recv, on_bytes, None).await
}

/// [`splice`], also aborting both directions ([`SpliceEnd::Idle`]) once no
/// byte moved either way for `idle`. Any byte in either direction restarts
/// the clock, so a `kubectl logs -f` that prints or an `exec` that types
/// is never idle.
pub async fn splice_with_idle<L, F>(
    local: &mut L,
    mut send: TunnelSend,
    mut recv: TunnelRecv,
    on_bytes: F,
    idle: Option<std::time::Duration>,
) -> SpliceOutcome
where
    L: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Direction, usize),
{
    let (mut rd, mut wr) = tokio::io::split(local);
    let (abort_tx, abort_rx) = watch::channel(None::<SpliceEnd>);
    let clock = crate::idle::IdleClock::new();
    let on_bytes = &|dir, n| {
        clock.touch();
        on_bytes(dir, n)
    };
    let watchdog = async {
        clock.expired(idle).await;
        abort_tx.send_replace(Some(SpliceEnd::Idle));
        std::future::pending::<(u64, u64)>().await
    };

    let up = {
        let abort_tx = &abort_tx;
        let mut abort_rx = abort_rx.clone();
        async move {
            let mut total = 0u64;
            let mut buf = BytesMut::new();
            loop {
                buf.reserve(LOCAL_READ_CHUNK);
                let read = tokio::select! {
                    r = rd.read_buf(&mut buf) => r,
                    _ = abort_rx.changed() => {
                        send.reset(proto::codes::STREAM_CANCELLED);
                        return total;
                    }
                };
                match read {
                    Ok(0) => {
                        send.finish().await;
                        return total;
                    }
                    Ok(n) => {
                        let chunk = buf.split().freeze();
                        let wrote = tokio::select! {
                            w = send.write_chunk(chunk) => w,
                            _ = abort_rx.changed() => {
                                send.reset(proto::codes::STREAM_CANCELLED);
                                return total;
                            }
                        };
                        if let Err(e) = wrote {
                            abort_tx.send_replace(Some(stream_end(&e)));
                            return total;
                        }
                        total += n as u64;
                        on_bytes(Direction::ToTunnel, n);
                    }
                    Err(_) => {
                        send.reset(proto::codes::STREAM_TCP_RESET);
                        abort_tx.send_replace(Some(SpliceEnd::LocalReset));
                        return total;
                    }
                }
            }
        }
    };

    let down = {
        let abort_tx = &abort_tx;
        let mut abort_rx = abort_rx.clone();
        async move {
            let mut total = 0u64;
            let mut recv = Gathering::new(&mut recv);
            loop {
                let chunk = tokio::select! {
                    c = recv.next() => c,
                    _ = abort_rx.changed() => {
                        recv.stop(proto::codes::STREAM_CANCELLED);
                        return total;
                    }
                };
                match chunk {
                    Ok(Some(bytes)) => {
                        let n = bytes.len();
                        let wrote = tokio::select! {
                            w = wr.write_all(&bytes) => w,
                            _ = abort_rx.changed() => {
                                recv.stop(proto::codes::STREAM_CANCELLED);
                                return total;
                            }
                        };
                        if wrote.is_err() {
                            recv.stop(proto::codes::STREAM_TCP_RESET);
                            abort_tx.send_replace(Some(SpliceEnd::LocalReset));
                            return total;
                        }
                        total += n as u64;
                        on_bytes(Direction::FromTunnel, n);
                    }
                    Ok(None) => {
                        // Peer half-closed: pass the FIN on. A failure here
                        // only means the local side is already gone.
                        let _ = wr.shutdown().await;
                        return total;
                    }
                    Err(e) => {
                        abort_tx.send_replace(Some(stream_end(&e)));
                        return total;
                    }
                }
            }
        }
    };

    // The watchdog never finishes; it only signals the two directions.
    let (to_tunnel, from_tunnel) = tokio::select! {
        totals = async { tokio::join!(up, down) } => totals,
        never = watchdog => never,
    };
    let end = abort_rx.borrow().unwrap_or(SpliceEnd::Clean);
    SpliceOutcome {
        to_tunnel,
        from_tunnel,
        end,
    }
}
