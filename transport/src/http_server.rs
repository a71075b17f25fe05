//! Accept loops shared by every listener the two binaries run.
//!
//! [`accept_backoff`] keeps a failing `accept` (out of file descriptors)
//! from spinning; [`serve_http1`] is the one HTTP/1.1 server setup (header
//! timeout, upgrades, optionally behind TLS) behind the server's
//! `--http-proxy-addr` and the agent's node proxy (both its listeners).

use std::error::Error as StdError;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// Logs a failed `accept` naming the listener and waits a moment, so
/// errors such as running out of file descriptors do not spin the loop.
pub async fn accept_backoff(listener: &str, e: &std::io::Error) {
    tracing::warn!(listener, error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// TLS in front of [`serve_http1`]'s connections.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// A handshake not done by then is dropped.
    pub handshake_timeout: Duration,
}

/// Serves HTTP/1.1 with upgrades on every connection `listener` accepts,
/// until the task is dropped; with `tls`, each connection first completes
/// its handshake (failures logged at debug). `new_service` is called once
/// per connection (for per-connection state); a client must send each
/// request head within `header_timeout`, also between keep-alive requests.
pub async fn serve_http1<F, S, B>(
    listener: TcpListener,
    tls: Option<TlsListener>,
    name: &'static str,
    header_timeout: Duration,
    mut new_service: F,
) where
    F: FnMut() -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                accept_backoff(name, &e).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let svc = new_service();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(sock, svc, name, peer, header_timeout).await;
            };
            let handshake = tls.acceptor.accept(sock);
            match tokio::time::timeout(tls.handshake_timeout, handshake).await {
                Ok(Ok(stream)) => serve_connection(stream, svc, name, peer, header_timeout).await,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// One connection's HTTP/1.1 with upgrades, over plain TCP or TLS alike.
async fn serve_connection<I, S, B>(
    io: I,
    svc: S,
    name: &'static str,
    peer: std::net::SocketAddr,
    header_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(listener = name, %peer, error = %e, "HTTP connection ended with an error");
    }
}
