//! The on-disk certificate layout, and what `tunnel-server certs init|agent` write into it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::atomic_file::{write_atomic, CERT_MODE, KEY_MODE};
use crate::issue::{
    CertificateAuthority, IssuedCert, DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY,
    DEFAULT_PROXY_CLIENT_CN,
};
use crate::node::{validate_node_name, NodeIdentity};
use crate::CertError;

/// CA certificate file name in a certificate directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// CA private key file name in a certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Tunnel server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.crt";
/// Tunnel server private key file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// CA that signs front-end client certificates (the server's `--proxy-client-ca`).
///
/// Distinct from [`CA_CERT_FILE`] so that no agent certificate can ever be a
/// front-end credential, even if an operator forgets `--proxy-client-name`.
pub const PROXY_CLIENT_CA_CERT_FILE: &str = "proxy-client-ca.crt";
/// Private key of [`PROXY_CLIENT_CA_CERT_FILE`].
pub const PROXY_CLIENT_CA_KEY_FILE: &str = "proxy-client-ca.key";
/// Certificate kube-apiserver presents to the server's proxy listener.
pub const PROXY_CLIENT_CERT_FILE: &str = "proxy-client.crt";
/// Private key for [`PROXY_CLIENT_CERT_FILE`].
pub const PROXY_CLIENT_KEY_FILE: &str = "proxy-client.key";

/// Client certificate replicas show each other on the peer path (`certs peer`).
pub const PEER_CERT_FILE: &str = "peer.crt";
/// Private key of [`PEER_CERT_FILE`].
pub const PEER_KEY_FILE: &str = "peer.key";

/// File name of a node's agent certificate: `agent-<node>.crt`.
pub fn agent_cert_file(node_name: &str) -> String {
    format!("agent-{node_name}.crt")
}

/// File name of a node's agent private key: `agent-<node>.key`.
pub fn agent_key_file(node_name: &str) -> String {
    format!("agent-{node_name}.key")
}

/// Creates a new CA plus server and proxy-client certificates in `dir` (created if needed).
///
/// Writes `ca.crt ca.key server.crt server.key proxy-client-ca.crt proxy-client-ca.key
/// proxy-client.crt proxy-client.key` and returns their paths. `ca.crt` signs the server
/// and the agents; the separate `proxy-client-ca.crt` signs only `proxy-client.crt`, so the
/// CA the front end trusts (`--proxy-client-ca`) never vouches for an agent. If any of them exists and `force` is false, fails with
/// [`CertError::WouldOverwrite`] and writes nothing.
pub fn init_cluster(
    dir: &Path,
    server_name: &str,
    server_ips: &[std::net::IpAddr],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let names = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        SERVER_CERT_FILE,
        SERVER_KEY_FILE,
        PROXY_CLIENT_CA_CERT_FILE,
        PROXY_CLIENT_CA_KEY_FILE,
        PROXY_CLIENT_CERT_FILE,
        PROXY_CLIENT_KEY_FILE,
    ];
    refuse_overwrite(dir, &names, force)?;
    let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY)?;
    let server = ca.issue_server(server_name, server_ips, DEFAULT_CERT_VALIDITY)?;
    let proxy_ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY)?;
    let proxy = proxy_ca.issue_client(DEFAULT_PROXY_CLIENT_CN, DEFAULT_CERT_VALIDITY)?;
    let pair = |ca: &CertificateAuthority| IssuedCert {
        cert_pem: ca.cert_pem().to_owned(),
        key_pem: ca.key_pem(),
    };
    let (ca_pair, proxy_ca_pair) = (pair(&ca), pair(&proxy_ca));
    write_files(
        dir,
        &[
            (CA_CERT_FILE, CA_KEY_FILE, &ca_pair),
            (SERVER_CERT_FILE, SERVER_KEY_FILE, &server),
            (
                PROXY_CLIENT_CA_CERT_FILE,
                PROXY_CLIENT_CA_KEY_FILE,
                &proxy_ca_pair,
            ),
            (PROXY_CLIENT_CERT_FILE, PROXY_CLIENT_KEY_FILE, &proxy),
        ],
        force,
    )
}

/// Issues `peer.crt` and `peer.key` in `dir`, signed by the (agent) CA found
/// there: the certificate every replica shows its peers (`--peer-cert`).
/// Same overwrite rule as [`init_cluster`]; returns the written paths.
pub fn issue_peer_files(
    dir: &Path,
    validity: std::time::Duration,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    refuse_overwrite(dir, &[PEER_CERT_FILE, PEER_KEY_FILE], force)?;
    let ca = CertificateAuthority::from_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))?;
    let peer = ca.issue_peer(validity)?;
    write_files(dir, &[(PEER_CERT_FILE, PEER_KEY_FILE, &peer)], force)
}

/// Issues `agent-<node>.crt` and `agent-<node>.key` in `dir`, signed by the CA found there.
///
/// Same overwrite rule as [`init_cluster`]; returns the written paths.
pub fn issue_agent_files(
    dir: &Path,
    identity: &NodeIdentity,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    issue_agent_files_valid_for(dir, identity, DEFAULT_CERT_VALIDITY, force)
}

/// [`issue_agent_files`] with a chosen lifetime (`certs agent --ttl`, e.g. short-lived
/// certificates that rotation renews).
pub fn issue_agent_files_valid_for(
    dir: &Path,
    identity: &NodeIdentity,
    validity: std::time::Duration,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    // Validate first: the name becomes part of the file names.
    validate_node_name(&identity.node_name)?;
    let cert_name = agent_cert_file(&identity.node_name);
    let key_name = agent_key_file(&identity.node_name);
    refuse_overwrite(dir, &[&cert_name, &key_name], force)?;
    let ca = CertificateAuthority::from_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))?;
    let agent = ca.issue_agent(identity, validity)?;
    write_files(dir, &[(&cert_name, &key_name, &agent)], force)
}

/// Fails with [`CertError::WouldOverwrite`] naming the first of `names` already in `dir`.
fn refuse_overwrite(dir: &Path, names: &[&str], force: bool) -> Result<(), CertError> {
    if force {
        return Ok(());
    }
    for name in names {
        let path = dir.join(name);
        // symlink_metadata: a dangling symlink still counts as "exists".
        if fs::symlink_metadata(&path).is_ok() {
            return Err(CertError::WouldOverwrite(path));
        }
    }
    Ok(())
}

/// Writes each (cert name, key name, PEMs) into `dir`: certs 0644, keys 0600, atomically.
///
/// Without `force`, files written before a failure are removed again, so a failed run
/// leaves nothing behind.
fn write_files(
    dir: &Path,
    pairs: &[(&str, &str, &IssuedCert)],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::with_capacity(pairs.len() * 2);
    for (cert_name, key_name, issued) in pairs {
        files.push((*cert_name, issued.cert_pem.as_str(), CERT_MODE));
        files.push((*key_name, issued.key_pem.as_str(), KEY_MODE));
    }
    let names: Vec<&str> = files.iter().map(|(name, _, _)| *name).collect();
    refuse_overwrite(dir, &names, force)?;

    let mut written = Vec::with_capacity(files.len());
    for (name, contents, mode) in files {
        let path = dir.join(name);
        if let Err(e) = write_atomic(&path, contents.as_bytes(), mode) {
            if !force {
                for done in &written {
                    // Best effort: we are already reporting the original failure.
                    let _ = fs::remove_file(done);
                }
            }
            return Err(e);
        }
        tracing::info!(path = %path.display(), "wrote");
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::agent_identity;
    use crate::load::{load_cert_chain, load_private_key, load_root_store};
    use crate::test_util::TempDir;
    use std::sync::Arc;

    const ALL: [&str; 8] = [
        CA_CERT_FILE,
        CA_KEY_FILE,
        SERVER_CERT_FILE,
        SERVER_KEY_FILE,
        PROXY_CLIENT_CA_CERT_FILE,
        PROXY_CLIENT_CA_KEY_FILE,
        PROXY_CLIENT_CERT_FILE,
        PROXY_CLIENT_KEY_FILE,
    ];

    fn init(dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertError> {
        init_cluster(
            dir,
            "tunnel.example.com",
            &["10.0.0.1".parse().unwrap()],
            force,
        )
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_writes_eight_loadable_files() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki/nested");
        let written = init(&dir, false).unwrap();
        let expected: Vec<PathBuf> = ALL.iter().map(|n| dir.join(n)).collect();
        assert_eq!(written, expected);
        for path in &written {
            assert!(path.is_file(), "{}", path.display());
        }
        assert_eq!(load_root_store(&dir.join(CA_CERT_FILE)).unwrap().len(), 1);
        load_cert_chain(&dir.join(SERVER_CERT_FILE)).unwrap();
        load_private_key(&dir.join(SERVER_KEY_FILE)).unwrap();
        load_private_key(&dir.join(PROXY_CLIENT_KEY_FILE)).unwrap();
        CertificateAuthority::from_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE)).unwrap();
        // No temp files left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 8);
        // The proxy client is signed by its own CA, not by the agent CA.
        let proxy = CertificateAuthority::from_files(
            &dir.join(PROXY_CLIENT_CA_CERT_FILE),
            &dir.join(PROXY_CLIENT_CA_KEY_FILE),
        )
        .unwrap();
        assert_ne!(
            proxy.cert_pem(),
            fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap()
        );
        let client = load_cert_chain(&dir.join(PROXY_CLIENT_CERT_FILE)).unwrap();
        let chains_to = |ca_file: &str| {
            let roots = Arc::new(load_root_store(&dir.join(ca_file)).unwrap());
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots,
                crate::tls::provider(),
            )
            .build()
            .unwrap()
            .verify_client_cert(&client[0], &[], rustls_pki_types::UnixTime::now())
            .is_ok()
        };
        assert!(chains_to(PROXY_CLIENT_CA_CERT_FILE));
        assert!(
            !chains_to(CA_CERT_FILE),
            "the agent CA must not vouch for the proxy client"
        );
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_0600_and_certs_0644() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        init(&dir, false).unwrap();
        for name in [
            CA_KEY_FILE,
            SERVER_KEY_FILE,
            PROXY_CLIENT_CA_KEY_FILE,
            PROXY_CLIENT_KEY_FILE,
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        for name in [
            CA_CERT_FILE,
            SERVER_CERT_FILE,
            PROXY_CLIENT_CA_CERT_FILE,
            PROXY_CLIENT_CERT_FILE,
        ] {
            assert_eq!(mode(&dir.join(name)), 0o644, "{name}");
        }
    }

    #[test]
    fn init_refuses_to_overwrite_and_writes_nothing() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        fs::create_dir_all(&dir).unwrap();
        let existing = dir.join(SERVER_KEY_FILE);
        fs::write(&existing, "precious").unwrap();

        match init(&dir, false) {
            Err(CertError::WouldOverwrite(path)) => assert_eq!(path, existing),
            other => panic!("expected WouldOverwrite, got {other:?}"),
        }
        assert_eq!(fs::read_to_string(&existing).unwrap(), "precious");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "nothing else written"
        );
    }

    #[test]
    fn init_overwrites_with_force() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        init(&dir, false).unwrap();
        let old_ca = fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
        assert!(matches!(
            init(&dir, false),
            Err(CertError::WouldOverwrite(_))
        ));
        assert_eq!(init(&dir, true).unwrap().len(), 8);
        assert_ne!(fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), old_ca);
        #[cfg(unix)]
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    }

    #[test]
    fn init_with_bad_server_name_writes_nothing() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        assert!(matches!(
            init_cluster(&dir, "not a name", &[], false),
            Err(CertError::InvalidServerName { .. })
        ));
        assert!(!dir.exists());
    }

    #[test]
    fn agent_files_are_signed_by_the_directory_ca() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        init(&dir, false).unwrap();
        let identity = NodeIdentity::new("edge-7", vec!["10.9.0.7".parse().unwrap()]).unwrap();
        let written = issue_agent_files(&dir, &identity, false).unwrap();
        assert_eq!(
            written,
            vec![dir.join("agent-edge-7.crt"), dir.join("agent-edge-7.key")]
        );
        let chain = load_cert_chain(&written[0]).unwrap();
        assert_eq!(agent_identity(&chain[0]).unwrap(), identity);
        load_private_key(&written[1]).unwrap();
        #[cfg(unix)]
        {
            assert_eq!(mode(&written[0]), 0o644);
            assert_eq!(mode(&written[1]), 0o600);
        }

        let before = fs::read(&written[0]).unwrap();
        assert!(matches!(
            issue_agent_files(&dir, &identity, false),
            Err(CertError::WouldOverwrite(p)) if p == written[0]
        ));
        assert_eq!(fs::read(&written[0]).unwrap(), before);
        issue_agent_files(&dir, &identity, true).unwrap();
        assert_ne!(fs::read(&written[0]).unwrap(), before);
    }

    #[test]
    fn agent_files_need_a_ca_and_a_valid_name() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("empty");
        fs::create_dir_all(&dir).unwrap();
        let identity = NodeIdentity::new("edge-1", vec![]).unwrap();
        let err = issue_agent_files(&dir, &identity, false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&dir.join(CA_CERT_FILE).display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);

        let bad = NodeIdentity {
            node_name: "../escape".into(),
            node_ips: vec![],
        };
        assert!(matches!(
            issue_agent_files(&dir, &bad, false),
            Err(CertError::InvalidNodeName { .. })
        ));
    }

    #[test]
    fn mismatched_ca_key_is_reported_with_paths() {
        let tmp = TempDir::new();
        let dir = tmp.path().join("pki");
        init(&dir, false).unwrap();
        // Replace the CA key with the server's key.
        fs::copy(dir.join(SERVER_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
        let identity = NodeIdentity::new("edge-1", vec![]).unwrap();
        let err = issue_agent_files(&dir, &identity, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.join(CA_KEY_FILE).display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("does not match"), "{msg}");
    }
}
