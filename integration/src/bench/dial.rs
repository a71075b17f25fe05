//! How a bench client opens a connection to a destination over each path.
//!
//! Direct TCP, `ssh -R` and rathole are all "connect to a TCP port"; the
//! tunnel front ends additionally speak HTTP CONNECT (or Konnectivity gRPC)
//! like kube-apiserver's egress dialer and wait for the dial's success
//! before sending payload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Any byte stream a path hands back.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed connection, ready for payload.
pub type Conn = Box<dyn Stream>;

/// Which bench service to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Sink,
    Echo,
}

/// Limit for one connection setup, so a stuck path fails instead of hanging.
const DIAL_LIMIT: Duration = Duration::from_secs(15);

/// How to reach the two services over one path.
#[derive(Clone)]
pub enum Dialer {
    /// Plain TCP to a port: the services themselves (direct), or the
    /// cloud-side listener of `ssh -R` / rathole.
    Tcp { sink: SocketAddr, echo: SocketAddr },
    /// HTTP CONNECT on the tunnel server's Unix-socket front end.
    Uds {
        path: PathBuf,
        sink: SocketAddr,
        echo: SocketAddr,
    },
    /// Konnectivity gRPC on the tunnel server's Unix-socket front end.
    Grpc {
        path: PathBuf,
        sink: SocketAddr,
        echo: SocketAddr,
    },
    /// HTTP CONNECT on the Unix socket to the edge TLS service, then TLS
    /// to it inside the tunnel (the baseline of [`Dialer::Sni`]).
    UdsEdgeTls {
        path: PathBuf,
        edge: SocketAddr,
        tls: EdgeClients,
    },
    /// TLS to `edge-1` through the SNI passthrough listener (`--kubelet-addr`).
    Sni { addr: SocketAddr, tls: EdgeClients },
    /// HTTP CONNECT on the tunnel server's TCP + mutual-TLS front end.
    Tls {
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
        sink: SocketAddr,
        echo: SocketAddr,
    },
}

/// TLS client configs for the edge TLS service, one per service (ALPN).
#[derive(Clone)]
pub struct EdgeClients {
    pub sink: std::sync::Arc<rustls::ClientConfig>,
    pub echo: std::sync::Arc<rustls::ClientConfig>,
}

impl EdgeClients {
    /// TLS to `edge-1` over `io`, asking for `svc`.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        svc: Service,
        io: S,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<S>> {
        let cfg = match svc {
            Service::Sink => self.sink.clone(),
            Service::Echo => self.echo.clone(),
        };
        let name = rustls::pki_types::ServerName::try_from("edge-1")?;
        Ok(tokio_rustls::TlsConnector::from(cfg)
            .connect(name, io)
            .await?)
    }
}

impl Dialer {
    /// Opens a connection to `svc`, completing the CONNECT handshake where
    /// there is one, so the returned stream carries only payload.
    pub async fn dial(&self, svc: Service) -> anyhow::Result<Conn> {
        tokio::time::timeout(DIAL_LIMIT, self.dial_inner(svc))
            .await
            .context("connection setup timed out")?
    }

    async fn dial_inner(&self, svc: Service) -> anyhow::Result<Conn> {
        let pick = |sink: &SocketAddr, echo: &SocketAddr| match svc {
            Service::Sink => *sink,
            Service::Echo => *echo,
        };
        match self {
            Dialer::Tcp { sink, echo } => {
                let s = TcpStream::connect(pick(sink, echo)).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(s))
            }
            Dialer::Uds { path, sink, echo } => {
                let s = UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting {}", path.display()))?;
                Ok(Box::new(connect(s, pick(sink, echo)).await?))
            }
            Dialer::UdsEdgeTls { path, edge, tls } => {
                let s = UnixStream::connect(path)
                    .await
                    .with_context(|| format!("connecting {}", path.display()))?;
                let s = connect(s, *edge).await?;
                Ok(Box::new(tls.handshake(svc, s).await?))
            }
            Dialer::Sni { addr, tls } => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(Box::new(tls.handshake(svc, s).await?))
            }
            Dialer::Grpc { path, sink, echo } => {
                super::grpc_conn::dial(path, pick(sink, echo)).await
            }
            Dialer::Tls {
                addr,
                connector,
                sink,
                echo,
            } => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                let tls = connector.connect(name.to_owned(), tcp).await?;
                Ok(Box::new(connect(tls, pick(sink, echo)).await?))
            }
        }
    }
}

/// Sends `CONNECT target` as kube-apiserver does and reads the response head.
///
/// Unlike the test client (which reads one byte per syscall so it can never
/// swallow tunneled bytes), this reads in one buffer: the bench services
/// never speak first, so nothing can follow the head yet, and a byte-wise
/// read would add dozens of syscalls to every latency sample.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    target: impl std::fmt::Display,
) -> anyhow::Result<S> {
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    let end = loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!(
                "front end closed the connection: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            bail!("response head too large");
        }
    };
    let status = head.split(|&b| b == b' ').nth(1).unwrap_or_default();
    if status != b"200" {
        bail!("CONNECT {target}: {:?}", String::from_utf8_lossy(&head));
    }
    if end != head.len() {
        bail!("unexpected bytes after the CONNECT response");
    }
    Ok(s)
}
