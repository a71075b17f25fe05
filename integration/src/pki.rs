//! Certificates for a test cluster, written to a temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The files of `certs init` in `dir`: the agent CA (`ca.crt`, also signing
/// the server certificate), and the separate front-end client CA
/// (`proxy-client-ca.crt`) signing `proxy-client.crt`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Creates the cluster files (server name `localhost`, IP 127.0.0.1).
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        certs::init_cluster(dir, "localhost", &["127.0.0.1".parse()?], false)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Issues an agent certificate for `node` and returns the client TLS
    /// configuration an agent would dial the server with, offering `alpn`.
    pub fn agent_client_tls(
        &self,
        node: &str,
        ips: &[IpAddr],
        alpn: &[u8],
    ) -> anyhow::Result<rustls::ClientConfig> {
        let (cert, key) = self.agent(node, ips)?;
        Ok(certs::agent_client_config(
            certs::load_root_store(&self.path("ca.crt"))?,
            certs::load_cert_chain(&cert)?,
            certs::load_private_key(&key)?,
            vec![alpn.to_vec()],
        )?)
    }

    /// Issues an agent certificate; returns (cert, key) paths.
    pub fn agent(&self, node: &str, ips: &[IpAddr]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let id = certs::NodeIdentity::new(node, ips.to_vec())?;
        certs::issue_agent_files(&self.dir, &id, true)?;
        Ok((
            self.dir.join(certs::bundle::agent_cert_file(node)),
            self.dir.join(certs::bundle::agent_key_file(node)),
        ))
    }

    /// Issues an agent certificate valid for `validity`; returns (cert, key) paths.
    pub fn agent_valid_for(
        &self,
        node: &str,
        ips: &[IpAddr],
        validity: std::time::Duration,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let id = certs::NodeIdentity::new(node, ips.to_vec())?;
        certs::issue_agent_files_valid_for(&self.dir, &id, validity, true)?;
        Ok((
            self.dir.join(certs::bundle::agent_cert_file(node)),
            self.dir.join(certs::bundle::agent_key_file(node)),
        ))
    }

    /// The bootstrap-token directory the test server uses (`--token-dir`).
    pub fn token_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Creates a bootstrap token with the real `tunnel-server certs token create` and
    /// returns it (the command's last line).
    pub fn token(&self, node: &str, ips: &[IpAddr], ttl: &str) -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(crate::process::bin("tunnel-server"));
        cmd.args(["certs", "token", "create", "--node", node, "--ttl", ttl])
            .arg("--token-dir")
            .arg(self.token_dir());
        for ip in ips {
            cmd.arg(format!("--node-ip={ip}"));
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "certs token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout)?;
        let token = stdout.lines().last().unwrap_or_default().trim().to_string();
        anyhow::ensure!(!token.is_empty(), "certs token create printed nothing");
        Ok(token)
    }

    /// The CA of this PKI, with its key, for issuing replacement certificates in tests.
    pub fn ca(&self) -> anyhow::Result<certs::CertificateAuthority> {
        Ok(certs::CertificateAuthority::from_files(
            &self.path(certs::bundle::CA_CERT_FILE),
            &self.path(certs::bundle::CA_KEY_FILE),
        )?)
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
