//! A minimal apiserver client for tests (plain or TLS, optional client certificate): one
//! HTTP/1.1 connection per request, bounded bodies, and watch streams read event by event.
//! It talks to the fake apiserver directly, through a [`super::LinkRelay`], or via a proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response body or watch line read.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Why a test request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or TLS handshake failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// HTTP/1.1 protocol error (also: connection closed mid-body).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (bad path or header).
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The body could not be read, or was over the limit.
    #[error("reading the body: {0}")]
    Body(String),
    /// Nothing arrived in time (what a cut link looks like).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body or watch line is not JSON.
    #[error("body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// CA, client certificate or server name unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl ApiResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, ClientError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    user_agent: String,
    timeout: Duration,
    /// Sent as `Accept-Encoding` when set (client-go's transport sends `gzip`).
    accept_encoding: Option<String>,
    /// Sent as `Authorization: Bearer <token>` when set (a pod's service-account token).
    bearer_token: Option<String>,
}

impl ApiClient {
    /// Plain HTTP to `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            user_agent: "integration-test/v0.0.0".into(),
            timeout: Duration::from_secs(10),
            accept_encoding: None,
            bearer_token: None,
        }
    }

    /// HTTPS to `addr`, trusting `ca` (PEM) for server name `localhost`, presenting
    /// `client_cert` = (cert, key) if given.
    pub fn tls(
        addr: SocketAddr,
        ca: &Path,
        client_cert: Option<(&Path, &Path)>,
    ) -> Result<Self, ClientError> {
        let tls_err = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
        let roots = certs::load_root_store(ca).map_err(|e| tls_err(&e))?;
        let builder = ClientConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| tls_err(&e))?
            .with_root_certificates(roots);
        let mut config = match client_cert {
            Some((cert, key)) => {
                let chain = certs::load_cert_chain(cert).map_err(|e| tls_err(&e))?;
                let key = certs::load_private_key(key).map_err(|e| tls_err(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_err(&e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from("localhost").map_err(|e| tls_err(&e))?;
        Ok(Self {
            tls: Some((TlsConnector::from(Arc::new(config)), name)),
            ..Self::plain(addr)
        })
    }

    /// Verifies the server certificate for `name` instead of `localhost` (e.g.
    /// `kubernetes.default.svc`, as a client dialing through the tunnel would).
    pub fn with_server_name(mut self, name: &str) -> Result<Self, ClientError> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| ClientError::Tls(format!("server name {name:?}: {e}")))?;
        if let Some((_, server_name)) = &mut self.tls {
            *server_name = name;
        }
        Ok(self)
    }

    /// Sends this User-Agent (the node proxy keys its cache on it).
    pub fn with_user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = user_agent.to_owned();
        self
    }

    /// Sends `Accept-Encoding: <coding>`; bodies are returned as received (not decoded).
    pub fn with_accept_encoding(mut self, coding: &str) -> Self {
        self.accept_encoding = Some(coding.to_owned());
        self
    }

    /// Sends `Authorization: Bearer <token>`, as a pod with in-cluster config does.
    pub fn with_bearer_token(mut self, token: &str) -> Self {
        self.bearer_token = Some(token.to_owned());
        self
    }

    /// Limit for connecting plus reading a whole (non-watch) response.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// GET `path` (with query) and read the whole response.
    pub async fn get(&self, path: &str) -> Result<ApiResponse, ClientError> {
        self.request(Method::GET, path, None, None).await
    }

    /// Sends a request with an optional JSON body and reads the whole response.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<ApiResponse, ClientError> {
        let exchange = async {
            let resp = self.send(method, path, content_type, body).await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?
                .to_bytes();
            Ok(ApiResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Starts a watch (`path` must carry `watch=1`); events are read with
    /// [`WatchEvents::next`].
    pub async fn watch(&self, path: &str) -> Result<WatchEvents, ClientError> {
        let resp = tokio::time::timeout(self.timeout, self.send(Method::GET, path, None, None))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        Ok(WatchEvents {
            status: resp.status().as_u16(),
            body: resp.into_body(),
            buf: Vec::new(),
            ended: false,
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let mut sender = self.connect().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("user-agent", &self.user_agent)
            .header("accept", "application/json");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(coding) = &self.accept_encoding {
            req = req.header("accept-encoding", coding);
        }
        if let Some(token) = &self.bearer_token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .map(Bytes::from)
            .unwrap_or_default();
        Ok(sender.send_request(req.body(Full::new(bytes))?).await?)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ClientError::Connect {
                        addr: self.addr,
                        source,
                    })?;
                handshake(stream).await
            }
        }
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An open watch stream.
pub struct WatchEvents {
    /// HTTP status of the watch response.
    pub status: u16,
    body: Incoming,
    buf: Vec<u8>,
    ended: bool,
}

impl WatchEvents {
    /// The next event (`{"type":..,"object":..}`), `None` once the server closed the stream,
    /// [`ClientError::Timeout`] if nothing arrived within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>, ClientError> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn next_event(&mut self) -> Result<Option<Value>, ClientError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(&line)?));
            }
            if self.ended {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buf);
                return Ok(Some(serde_json::from_slice(&rest)?));
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                    if self.buf.len() > MAX_BODY {
                        return Err(ClientError::Body("watch line over 64 MiB".into()));
                    }
                }
            }
        }
    }

    /// Reads events until `pred` holds for one (returned) or `timeout` passes overall.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(ev) if pred(&ev) => return Ok(ev),
                Some(_) => {}
                None => return Err(ClientError::Body("watch ended".into())),
            }
        }
    }
}
