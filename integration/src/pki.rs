//! Certificates for a test cluster, written to a temporary directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A CA, server certificate and proxy client certificate in `dir`.
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

    /// Issues an agent certificate; returns (cert, key) paths.
    pub fn agent(&self, node: &str, ips: &[IpAddr]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let id = certs::NodeIdentity::new(node, ips.to_vec())?;
        certs::issue_agent_files(&self.dir, &id, true)?;
        Ok((
            self.dir.join(certs::bundle::agent_cert_file(node)),
            self.dir.join(certs::bundle::agent_key_file(node)),
        ))
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
