//! Konnectivity gRPC front end: `/ProxyService/Proxy` over HTTP/2, for
//! kube-apiserver's `proxyProtocol: GRPC` egress selector.
//!
//! kube-apiserver opens one connection and one call per dial: DIAL_REQ, then
//! DATA both ways, then CLOSE_REQ. Each call is one tunnel stream from the
//! same [`Dialer`](crate::dial::Dialer) as HTTP CONNECT. The `h2` crate gives
//! direct control of HTTP/2 flow control, which is the protocol's only
//! backpressure: a tunnel chunk is read only once the client's window has
//! room, and the client's bytes are pulled from h2 only once the previous
//! packet was written into the tunnel ([`reader`] explains the window).
//!
//! The h2 crate is carried with one patch (`third_party/h2/PATCHES.md`):
//! grpc-go on a Unix socket sends the socket path as `:authority`, which
//! upstream h2 resets with PROTOCOL_ERROR.

pub mod budget;
mod call;
mod reader;
pub mod request;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::FrontendContext;

/// Largest gRPC message accepted from a client: the Go client's own default
/// limit, so anything a Go client may send is accepted.
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Per-stream receive window: how much a client may send before its bytes
/// reach the tunnel.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Per-connection receive window (kube-apiserver uses one call per connection).
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Calls one connection may have open at once.
const MAX_CALLS_PER_CONNECTION: u32 = 256;
/// Largest request header block.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Most response bytes h2 queues per stream beyond the client's window.
const MAX_SEND_BUFFER: usize = 128 * 1024;

/// Serves one HTTP/2 connection (its preface not yet consumed: `io` replays it).
///
/// The first call must arrive by `deadline` (`--header-timeout`), like a
/// CONNECT head, and a connection without open calls is closed after
/// `--header-timeout` of idleness, so idle connections cannot pile up.
/// `forbidden` refuses every call (TLS client not allowed).
pub async fn serve<IO>(
    io: IO,
    ctx: Arc<FrontendContext>,
    forbidden: Option<String>,
    deadline: Instant,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    let mut conn = match tokio::time::timeout_at(deadline, builder.handshake(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!("HTTP/2 handshake not completed within --header-timeout");
            return;
        }
    };
    let forbidden: Option<Arc<str>> = forbidden.map(Arc::from);
    // Each call task holds a clone: the count says whether any call is open.
    let calls = Arc::new(());
    // Call tasks say when they end, so the idle time counts from then.
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // No call open, and none started or ended since this instant minus
    // --header-timeout: the connection is idle (also covers a client that
    // never starts its first call).
    let mut idle_at = deadline;
    loop {
        let next = tokio::select! {
            n = conn.accept() => n,
            Some(()) = ended_rx.recv() => {
                idle_at = Instant::now() + ctx.header_timeout;
                continue;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if Arc::strong_count(&calls) == 1 {
                    tracing::info!("no gRPC call on this connection within --header-timeout; closing");
                    // GOAWAY, and flush what the last call sent (its trailers).
                    conn.graceful_shutdown();
                    break;
                }
                idle_at = Instant::now() + ctx.header_timeout;
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                idle_at = Instant::now() + ctx.header_timeout;
                let ctx = ctx.clone();
                let forbidden = forbidden.clone();
                let open = calls.clone();
                let ended = ended_tx.clone();
                tokio::spawn(async move {
                    call::serve_call(req, respond, ctx, forbidden).await;
                    drop(open);
                    let _ = ended.send(());
                });
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                return;
            }
            None => break,
        }
    }
    // Drive the connection until its last calls have flushed, for at most
    // one more --header-timeout (a client that never reads cannot hold it).
    let flushed = std::future::poll_fn(|cx| conn.poll_closed(cx));
    let _ = tokio::time::timeout(ctx.header_timeout, flushed).await;
}
