//! The destination services every path reaches: a byte sink that confirms
//! delivery, and an echo that counts accepted connections.
//!
//! They live in the bench process on 127.0.0.1 so that every path (direct,
//! tunnel, ssh, rathole) ends at exactly the same code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Read size of the sink: large, so the sink is never the bottleneck.
const SINK_READ: usize = 256 * 1024;
/// Flag in the sink's length: send that many bytes to the client instead
/// (edge → cloud, the direction of `kubectl logs`).
pub const DOWNLOAD: u64 = 1 << 63;

/// A sink: the client sends an 8-byte big-endian length `n`, then `n` bytes;
/// the sink reads exactly `n` bytes and answers with the same 8 bytes.
/// With [`DOWNLOAD`] set in the length the sink is a source instead: it
/// sends `n` bytes and waits for the client to close.
///
/// The reply is what makes throughput honest: a sender's `write` returns as
/// soon as bytes sit in a socket or tunnel buffer, so timing writes alone
/// would count megabytes still in flight. The clock stops only when the
/// receiving end has counted every byte.
pub async fn sink_server() -> std::io::Result<SocketAddr> {
    sink_server_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// [`sink_server`] on `bind` (the link bench's edge listens on every address).
pub async fn sink_server_on(bind: SocketAddr) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(len);
                let mut buf = vec![0u8; SINK_READ];
                if left & DOWNLOAD != 0 {
                    let data = crate::bench::measure::payload();
                    let mut left = left & !DOWNLOAD;
                    while left > 0 {
                        let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        if s.write_all(&data[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = s.read(&mut buf).await;
                    return;
                }
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    match s.read(&mut buf[..want]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n as u64,
                    }
                }
                if s.write_all(&len).await.is_err() {
                    return;
                }
                // Wait for the client's close so the teardown is orderly.
                let _ = s.read(&mut buf).await;
            });
        }
    });
    Ok(addr)
}

/// An echo service that counts accepted connections.
pub struct Echo {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
}

impl Echo {
    /// Connections accepted so far. Used by the idle-memory phase to know
    /// that every connection reached the far end (for ssh and rathole, a
    /// completed local `connect` only means their listener accepted it).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Echoes every connection until the client's EOF.
pub async fn echo_server() -> std::io::Result<Echo> {
    echo_server_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// [`echo_server`] on `bind`.
pub async fn echo_server_on(bind: SocketAddr) -> std::io::Result<Echo> {
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // A 1-byte echo must leave at once; no Nagle delay on our side.
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(Echo { addr, accepted })
}

/// An edge TLS service for the paths that carry TLS end to end (SNI
/// passthrough, and CONNECT with TLS inside for comparison): it terminates
/// TLS with its own certificate for `edge-1` and forwards the plaintext to
/// the sink or the echo, chosen by the ALPN protocol the client offered
/// (`sink` or `echo`), so one port (`--kubelet-port`) reaches both.
pub struct EdgeTls {
    pub addr: SocketAddr,
    /// Client configs offering `sink` and `echo`, trusting the service's CA.
    pub sink_client: Arc<rustls::ClientConfig>,
    pub echo_client: Arc<rustls::ClientConfig>,
    _certs: tempfile::TempDir,
}

/// Starts [`EdgeTls`] on 127.0.0.1 in front of `sink` and `echo`.
pub async fn edge_tls_server(sink: SocketAddr, echo: SocketAddr) -> anyhow::Result<EdgeTls> {
    let ca = certs::CertificateAuthority::generate(std::time::Duration::from_secs(86400))?;
    let leaf = ca.issue_server(
        "edge-1",
        &["127.0.0.1".parse()?],
        std::time::Duration::from_secs(86400),
    )?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, pem: &str| -> std::io::Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, pem)?;
        Ok(p)
    };
    let chain = certs::load_cert_chain(&file("edge.crt", &leaf.cert_pem)?)?;
    let key = certs::load_private_key(&file("edge.key", &leaf.key_pem)?)?;
    let roots = certs::load_root_store(&file("ca.crt", ca.cert_pem())?)?;
    let mut server = rustls::ServerConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"sink".to_vec(), b"echo".to_vec()];
    let client = |alpn: &[u8]| -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut c = rustls::ClientConfig::builder_with_provider(certs::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(c))
    };
    let (sink_client, echo_client) = (client(b"sink")?, client(b"echo")?);

    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let to = match tls.get_ref().1.alpn_protocol() {
                    Some(b"sink") => sink,
                    Some(b"echo") => echo,
                    _ => return,
                };
                let Ok(mut backend) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = backend.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
            });
        }
    });
    Ok(EdgeTls {
        addr,
        sink_client,
        echo_client,
        _certs: dir,
    })
}
