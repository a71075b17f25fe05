//! The hub's HTTP/1.1-over-TLS client to the apiserver, with a keep-alive pool.
//!
//! How bytes reach the apiserver is a [`UpstreamDialer`]: [`DirectDialer`]
//! opens TCP; the tunnel path (`--apiserver tunnel`) is tunnel-agent's
//! `TunnelDialer`, which opens a service stream over the agent's link. This
//! trait is where the tunnel ends and the node proxy begins.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::health::OfflineReason;
use crate::upstream_tls::UpstreamTls;

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Body of requests sent upstream.
pub type UpstreamBody = BoxBody<Bytes, hyper::Error>;

/// Opens a byte stream to the apiserver's TLS port (TLS is done on top by the hub).
pub trait UpstreamDialer: Send + Sync + 'static {
    /// One new connection.
    fn dial(&self) -> BoxFuture<'_, std::io::Result<Box<dyn UpstreamIo>>>;

    /// Whether the link under this dialer is up, when the dialer knows (the
    /// tunnel does; a TCP dialer does not). With it the prober rests while
    /// the hub is online and quiet (`probe_schedule.rs`).
    fn liveness(&self) -> Option<Box<dyn LinkLiveness>> {
        None
    }
}

/// A view of the link under an [`UpstreamDialer`] (the agent's tunnel connection).
pub trait LinkLiveness: Send + 'static {
    /// Whether the link is up now.
    fn is_up(&self) -> bool;
    /// Resolves when [`is_up`](Self::is_up) may have changed; never, once the
    /// link's owner is gone.
    fn changed(&mut self) -> BoxFuture<'_, ()>;
}

/// A byte stream to the apiserver.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpstreamIo for T {}

/// Dials the apiserver directly over TCP (`--apiserver https://HOST:PORT`).
pub struct DirectDialer {
    pub host: String,
    pub port: u16,
}

impl UpstreamDialer for DirectDialer {
    fn dial(&self) -> BoxFuture<'_, std::io::Result<Box<dyn UpstreamIo>>> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            let _ = tcp.set_nodelay(true);
            transport::socket::set_tcp_keepalive(&tcp);
            Ok(Box::new(tcp) as Box<dyn UpstreamIo>)
        })
    }
}

/// Which identity a request goes upstream with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// The request has no `Authorization`: present the hub client certificate.
    NodeCertificate,
    /// The request carries its own token, or comes from a pod (HTTPS
    /// listener) without one: present no certificate.
    OwnToken,
}

/// The upstream could not be reached or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the apiserver: {0}")]
    Dial(std::io::Error),
    #[error("connecting to the apiserver took longer than {0:?}")]
    DialTimeout(Duration),
    #[error("TLS with the apiserver: {0}")]
    Tls(std::io::Error),
    #[error("HTTP with the apiserver: {0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// The bounded reason this error reports while offline.
    pub fn offline_reason(&self) -> OfflineReason {
        match self {
            UpstreamError::Dial(io) => OfflineReason::of_dial(io.kind()),
            UpstreamError::DialTimeout(_) => OfflineReason::Timeout,
            UpstreamError::Tls(io) => OfflineReason::of_tls(
                io.get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            ),
            UpstreamError::Http(_) => OfflineReason::HttpFailed,
        }
    }
}

/// Idle connections kept per identity.
const MAX_IDLE: usize = 16;

/// The client: dial, TLS, HTTP/1.1, and a pool of idle connections per identity.
pub struct UpstreamClient {
    dialer: Arc<dyn UpstreamDialer>,
    tls: UpstreamTls,
    server_name: ServerName<'static>,
    host: HeaderValue,
    connect_timeout: Duration,
    idle: [Mutex<Vec<SendRequest<UpstreamBody>>>; 2],
}

impl UpstreamClient {
    /// A client for `server_name` over `dialer`; `host` is the `Host` header
    /// for requests without one; connection setup is bounded by `connect_timeout`.
    pub fn new(
        dialer: Arc<dyn UpstreamDialer>,
        tls: UpstreamTls,
        server_name: ServerName<'static>,
        host: HeaderValue,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            dialer,
            tls,
            server_name,
            host,
            connect_timeout,
            idle: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        })
    }

    /// Sends one request (origin-form URI) and returns the response head; the
    /// body streams. `upgrade` requests get a connection of their own.
    pub async fn send(
        self: &Arc<Self>,
        creds: Credentials,
        mut req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        req.headers_mut()
            .entry(hyper::header::HOST)
            .or_insert_with(|| self.host.clone());
        if !upgrade {
            if let Some(mut sender) = self.take_idle(creds) {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        self.recycle(creds, sender);
                        return Ok(resp);
                    }
                    // The idle connection was closed under us before the request
                    // went out: not a sign of an unreachable cloud, try a new one.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => {
                            tracing::debug!(error = %e.error(), "idle apiserver connection unusable; using a new one");
                            req = unsent;
                        }
                        None => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
        }
        let mut sender = self.connect(creds, upgrade).await?;
        let resp = sender.send_request(req).await?;
        if !upgrade {
            self.recycle(creds, sender);
        }
        Ok(resp)
    }

    /// Puts `sender` back in the pool once its current response's body is done.
    fn recycle(self: &Arc<Self>, creds: Credentials, mut sender: SendRequest<UpstreamBody>) {
        let me = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                me.put_idle(creds, sender);
            }
        });
    }

    /// Drops every idle connection (the link went down: they are likely dead).
    pub fn forget_idle(&self) {
        for pool in &self.idle {
            if let Ok(mut p) = pool.lock() {
                p.clear();
            }
        }
    }

    fn pool(&self, creds: Credentials) -> &Mutex<Vec<SendRequest<UpstreamBody>>> {
        match creds {
            Credentials::NodeCertificate => &self.idle[0],
            Credentials::OwnToken => &self.idle[1],
        }
    }

    fn take_idle(&self, creds: Credentials) -> Option<SendRequest<UpstreamBody>> {
        let mut pool = self.pool(creds).lock().ok()?;
        while let Some(s) = pool.pop() {
            if s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, creds: Credentials, sender: SendRequest<UpstreamBody>) {
        if let Ok(mut pool) = self.pool(creds).lock() {
            if pool.len() < MAX_IDLE {
                pool.push(sender);
            }
        }
    }

    async fn connect(
        &self,
        creds: Credentials,
        upgrade: bool,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let config = match creds {
            Credentials::NodeCertificate => self.tls.with_node_cert.clone(),
            Credentials::OwnToken => self.tls.anonymous.clone(),
        };
        let setup = async {
            let io = self.dialer.dial().await.map_err(UpstreamError::Dial)?;
            TlsConnector::from(config)
                .connect(self.server_name.clone(), io)
                .await
                .map_err(UpstreamError::Tls)
        };
        let tls = tokio::time::timeout(self.connect_timeout, setup)
            .await
            .map_err(|_| UpstreamError::DialTimeout(self.connect_timeout))??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let result = if upgrade {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "apiserver connection ended with an error");
            }
        });
        Ok(sender)
    }
}
