//! A front-end client that speaks like kube-apiserver's HTTPConnect dialer.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// The server's answer to a CONNECT, and the stream to keep using on 200.
pub struct ConnectReply<S> {
    pub status: u16,
    /// Response body (error text) for non-200 answers.
    pub body: String,
    pub stream: S,
}

/// Sends `CONNECT target` exactly as kube-apiserver does and reads the
/// response head byte by byte, so no tunneled byte is consumed.
pub async fn send_connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    target: &str,
) -> std::io::Result<ConnectReply<S>> {
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed mid-response: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        head.push(b[0]);
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {text:?}")))?;
    let mut body = String::new();
    if status != 200 {
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        body = String::from_utf8_lossy(&raw).into_owned();
    }
    Ok(ConnectReply {
        status,
        body,
        stream: s,
    })
}

/// CONNECT through the Unix-socket front end.
pub async fn connect_uds(path: &Path, target: &str) -> std::io::Result<ConnectReply<UnixStream>> {
    send_connect(UnixStream::connect(path).await?, target).await
}

/// A TLS connector for `--proxy-addr`, presenting `client` (cert, key) if given.
pub fn proxy_tls(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let roots = certs::load_root_store(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let cfg = match client {
        Some((c, k)) => builder
            .with_client_auth_cert(certs::load_cert_chain(c)?, certs::load_private_key(k)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// CONNECT through the TLS front end at `addr` (server name 127.0.0.1).
pub async fn connect_tls(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    target: &str,
) -> anyhow::Result<ConnectReply<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let tls = connector.connect(name.to_owned(), tcp).await?;
    Ok(send_connect(tls, target).await?)
}
