//! Certificates for the edgetunnel cloud<->edge tunnel.
//!
//! Issues a CA and the server / agent / proxy-client certificates it signs (rcgen, ECDSA
//! P-256), loads PEM files with errors that name the file, builds the rustls configs for
//! mutual TLS, and reads an agent's node identity out of its verified certificate.

#![warn(missing_docs)]

pub mod atomic_file;
pub mod bundle;
pub mod check;
pub mod csr;
mod error;
pub mod identity;
pub mod issue;
pub mod load;
mod node;
mod pem;
pub mod reloadable;
pub mod tls;
pub mod token;

pub use bundle::{init_cluster, issue_agent_files, issue_agent_files_valid_for, issue_peer_files};
pub use csr::{agent_key_request, AgentKeyRequest};
pub use error::CertError;
pub use identity::{
    agent_identity, common_name, is_agent_certificate, is_peer_certificate, not_after_unix,
    not_before_unix, organizations,
};
pub use issue::{CertificateAuthority, IssuedCert};
pub use load::{load_cert_and_key, load_cert_chain, load_private_key, load_root_store};
pub use node::{validate_node_name, NodeIdentity};
pub use reloadable::{ReloadableClientVerifier, ReloadableServerCert};
pub use tls::{
    agent_client_config, agent_facing_server_config, enroll_client_config, provider,
    proxy_server_config, proxy_server_config_reloadable, reloadable_server_config,
};
pub use token::{BootstrapToken, TokenError, TokenRecord, TokenStore};

#[cfg(test)]
mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique scratch directory, removed on drop (avoids a `tempfile` dependency).
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path =
                std::env::temp_dir().join(format!("certs-test-{}-{n}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
