//! The apiserver-facing front end: HTTP CONNECT and Konnectivity gRPC on a
//! Unix socket and on TCP with mutual TLS; [`http_proxy`] is the plain-HTTP
//! proxy for Prometheus.
//!
//! The first bytes of a connection choose the protocol ([`sniff`]): the
//! HTTP/2 preface goes to [`grpc`], anything else to the CONNECT path. A
//! CONNECT connection is read until its request head is complete (bounded in
//! size and time), routed through the [`Dialer`], answered `200` only once
//! the agent's dial succeeded, and then spliced byte for byte.

pub mod conn_cap;
pub mod early_http;
pub mod grpc;
pub mod head_clock;
pub mod http_proxy;
pub mod listeners;
pub mod reply;
pub mod rewind;
pub mod sni;
pub mod sniff;
pub mod transparent;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use transport::socket::AbortOnDrop;
use transport::splice::SpliceEnd;

use tracing::Instrument;

use crate::dial::{Dialer, EdgeStream, Frontend};
use proto::connect_head::{self as connect, parse_connect, HeadError, MAX_HEAD};

/// What the front end needs from the rest of the server.
pub struct FrontendContext {
    pub dialer: Arc<Dialer>,
    pub header_timeout: Duration,
    /// `--max-connections-per-listener`.
    pub max_connections: usize,
    /// `--http-proxy-idle-timeout`: keep-alive idle time on `--http-proxy-addr`.
    pub http_proxy_idle: Duration,
}

/// The metric label for requests on this front end.
const PROTOCOL: &str = "http-connect";

/// Serves one client connection. `forbidden` is set when the TLS client
/// certificate is not acceptable; the request is then answered 403.
pub async fn serve_connection<IO>(mut io: IO, ctx: Arc<FrontendContext>, forbidden: Option<String>)
where
    IO: AsyncRead + AsyncWrite + Unpin + AbortOnDrop + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + ctx.header_timeout;
    let mut buf = BytesMut::with_capacity(1024);
    match tokio::time::timeout_at(deadline, read_sniff(&mut io, &mut buf)).await {
        // Nothing, or a preface cut short: an incomplete head either way.
        Err(_) => {
            respond(&mut io, &ctx, 408, "request header not received in time").await;
            return;
        }
        Ok(None) => return,
        Ok(Some(sniff::Sniffed::Http2)) => {
            let io = rewind::Rewind::new(buf.freeze(), io);
            grpc::serve(io, ctx, forbidden, deadline).await;
            return;
        }
        Ok(Some(_)) => {}
    }
    let head = tokio::time::timeout_at(deadline, read_head(&mut io, &mut buf)).await;
    let request = match head {
        Err(_) => {
            respond(&mut io, &ctx, 408, "request header not received in time").await;
            return;
        }
        Ok(Err(ReadHead::Closed)) => return,
        Ok(Err(ReadHead::Bad(e))) => {
            respond(&mut io, &ctx, e.http_status(), &e.to_string()).await;
            return;
        }
        Ok(Ok(r)) => r,
    };
    if let Some(reason) = forbidden {
        respond(&mut io, &ctx, 403, &reason).await;
        return;
    }
    let target = request.target;
    let stream = match ctx.dialer.dial(&target, Frontend::Connect).await {
        Ok(s) => s,
        Err(e) => {
            respond(&mut io, &ctx, e.http_status(), &e.to_string()).await;
            return;
        }
    };
    let span =
        tracing::info_span!("stream", node = %stream.node, stream_id = stream.stream_id, %target);
    let early = buf.split_off(request.head_len).freeze();
    carry(io, &ctx, stream, early).instrument(span).await;
}

/// Answers 200 and splices the client to the edge stream until both ends close.
async fn carry<IO>(mut io: IO, ctx: &FrontendContext, stream: EdgeStream, early: bytes::Bytes)
where
    IO: AsyncRead + AsyncWrite + Unpin + AbortOnDrop,
{
    if io.write_all(reply::ESTABLISHED).await.is_err() {
        let mut send = stream.send;
        send.reset(proto::codes::STREAM_CANCELLED);
        return;
    }
    count(ctx, 200);
    splice_to_edge(io, &ctx.dialer, stream, early, Frontend::Connect).await;
}

/// Sends `early` (client bytes already read) to the edge, then splices the
/// client and the edge stream until both ends close. A lost or reset tunnel
/// resets the client connection, so it does not mistake the cut for an end.
pub(crate) async fn splice_to_edge<IO>(
    mut io: IO,
    dialer: &Dialer,
    stream: EdgeStream,
    early: bytes::Bytes,
    frontend: Frontend,
) where
    IO: AsyncRead + AsyncWrite + Unpin + AbortOnDrop,
{
    let EdgeStream {
        mut send,
        recv,
        node,
        _active,
        ..
    } = stream;
    if !early.is_empty() && send.write_chunk(early).await.is_err() {
        let _ = io.abort_on_drop();
        return;
    }
    let outcome = dialer.splice(&mut io, send, recv, &node, frontend).await;
    tracing::debug!(to_edge = outcome.to_tunnel, from_edge = outcome.from_tunnel,
        end = ?outcome.end, "stream closed");
    if matches!(
        outcome.end,
        SpliceEnd::TunnelReset | SpliceEnd::TunnelLost | SpliceEnd::Idle
    ) {
        let _ = io.abort_on_drop();
    }
}

/// Reads until the first bytes tell the protocol; `None` if the client left.
async fn read_sniff<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Option<sniff::Sniffed> {
    loop {
        match sniff::sniff(buf) {
            sniff::Sniffed::NeedMore => {}
            decided => return Some(decided),
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

enum ReadHead {
    Closed,
    Bad(HeadError),
}

async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<connect::ConnectRequest, ReadHead> {
    loop {
        // The sniffer may already have read the whole head.
        if !buf.is_empty() {
            match parse_connect(buf) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) if buf.len() > MAX_HEAD => return Err(ReadHead::Bad(HeadError::TooLarge)),
                Ok(None) => {}
                Err(e) => return Err(ReadHead::Bad(e)),
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(1024.min((MAX_HEAD + 1).saturating_sub(buf.len())).max(1));
        }
        let n = io.read_buf(buf).await.map_err(|_| ReadHead::Closed)?;
        if n == 0 {
            return Err(ReadHead::Closed);
        }
    }
}

/// Writes an error response and closes gracefully.
///
/// Unread request bytes at close make the kernel send a reset, and the client
/// would see "connection reset" instead of our answer, so the rest of the
/// request is drained first (bounded in bytes and time, like HTTP servers'
/// lingering close).
async fn respond<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    ctx: &FrontendContext,
    status: u16,
    msg: &str,
) {
    count(ctx, status);
    answer_and_linger(io, &reply::error_response(status, msg)).await;
}

/// Writes `response`, then closes with [`linger_close`], so the client reads
/// the answer instead of a reset.
pub(crate) async fn answer_and_linger<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    response: &[u8],
) {
    let _ = io.write_all(response).await;
    linger_close(io).await;
}

/// Closes our side after a refusal and drains what the client still sends
/// (bounded in bytes and time, like HTTP servers' lingering close), so the
/// kernel does not answer unread bytes with a reset that would hide the
/// refusal from the client.
pub(crate) async fn linger_close<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_MAX_BYTES;
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_MAX_TIME, drain).await;
}

/// Most request bytes read and discarded after an error response.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Longest wait for the client to close after an error response.
const LINGER_MAX_TIME: Duration = Duration::from_millis(500);

fn count(ctx: &FrontendContext, status: u16) {
    ctx.dialer
        .metrics()
        .frontend_requests
        .with_label_values(&[PROTOCOL, &status.to_string()])
        .inc();
}
