//! A kubelet stand-in for the SNI and transparent front ends: an HTTPS
//! server with its own CA (not the tunnel's), a certificate for the node's
//! name and IP, and optional client-certificate authentication, like
//! kubelet's `:10250`.
//!
//! Every response names the node, the path and the verified client
//! certificate's common name (or `anonymous`), so a test can tell which
//! edge answered and that client authentication went through end to end.
//! `/metrics` answers in the Prometheus text format.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Longest request head the stand-in reads.
const MAX_HEAD: usize = 8 * 1024;

/// The kubelet-side CA: serving certificates for nodes, client certificates
/// for scrapers (metrics-server's `--kubelet-client-certificate`).
pub struct KubeletPki {
    dir: PathBuf,
    ca: certs::CertificateAuthority,
}

impl KubeletPki {
    /// A fresh CA in `dir` (written as `kubelet-ca.crt`).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(86400))?;
        std::fs::write(dir.join("kubelet-ca.crt"), ca.cert_pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// The CA certificate clients verify kubelets with.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("kubelet-ca.crt")
    }

    /// A client certificate with common name `cn`; (cert, key) paths.
    pub fn client(&self, cn: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let c = self.ca.issue_client(cn, Duration::from_secs(86400))?;
        self.write(&format!("client-{cn}"), &c)
    }

    /// The TLS config of `node`'s kubelet: a certificate for the node name,
    /// `<node>.<domain>` names and `ips`; client certificates of this CA are
    /// verified when presented.
    pub fn server_config(
        &self,
        node: &str,
        extra_names: &[String],
        ips: &[IpAddr],
    ) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let c = self
            .ca
            .issue_server_names(node, extra_names, ips, Duration::from_secs(86400))?;
        let (cert, key) = self.write(&format!("kubelet-{node}"), &c)?;
        let chain = certs::load_cert_chain(&cert)?;
        let key = certs::load_private_key(&key)?;
        let roots = certs::load_root_store(&self.ca_path())?;
        let mut cfg = certs::proxy_server_config(chain, key, roots)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    fn write(&self, name: &str, c: &certs::IssuedCert) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert, &c.cert_pem)?;
        std::fs::write(&key, c.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// Serves HTTPS as `node`'s kubelet on `addr` until the runtime stops;
/// returns the bound address.
pub async fn kubelet_on(
    addr: SocketAddr,
    node: &str,
    tls: Arc<rustls::ServerConfig>,
) -> io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    let acceptor = TlsAcceptor::from(tls);
    let node = node.to_string();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (acceptor, node) = (acceptor.clone(), node.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| certs::common_name(leaf).ok().flatten())
                    .unwrap_or_else(|| "anonymous".into());
                // One request after another on the connection (keep-alive).
                while let Some(path) = read_request(&mut tls).await {
                    let body = if path == "/metrics" {
                        format!("kubelet_standin_up{{node=\"{node}\",client=\"{client}\"}} 1\n")
                    } else {
                        format!("kubelet {node} path {path} client {client}\n")
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if tls.write_all(head.as_bytes()).await.is_err()
                        || tls.write_all(body.as_bytes()).await.is_err()
                        || tls.flush().await.is_err()
                    {
                        return;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    Ok(bound)
}

/// Reads one request head; its path, or `None` at EOF or on garbage.
async fn read_request<IO: tokio::io::AsyncRead + Unpin>(io: &mut IO) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD || io.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).map(str::to_string)
}
