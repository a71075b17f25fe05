//! `certs init|agent --output-format secret`: the same certificates as Kubernetes Secret
//! manifests that `kubectl apply -f` takes, in place of the PEM files.
//!
//! `certs init` writes `secrets.yaml` with `tunnel-ca` (`ca.crt`, for agents and the
//! server), `tunnel-ca-key` (`ca.key`, only for servers that sign enrolled certificates),
//! `tunnel-server-tls` and `tunnel-proxy-client` (type `kubernetes.io/tls`, with `ca.crt`
//! too), and `tunnel-server-peer` (`peer.crt`, `peer.key`: what replicas show each other). It still writes `ca.crt` and `ca.key` as PEM: `certs agent` and `certs token`
//! need the CA later. `certs agent` writes `agent-<node>.secret.yaml` (Secret
//! `tunnel-agent-<node>`, type `kubernetes.io/tls`). Values go in `stringData` as literal
//! blocks, so the PEM is readable in the manifest; files are mode 0600 (they hold keys).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::bundle::{CA_CERT_FILE, CA_KEY_FILE};
use certs::issue::{DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY, DEFAULT_PROXY_CLIENT_CN};
use certs::{CertError, CertificateAuthority, IssuedCert, NodeIdentity};

/// `--output-format` of `certs init` and `certs agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// PEM files (`ca.crt`, `server.key`, ...).
    Pem,
    /// Kubernetes Secret manifests.
    Secret,
}

/// One Secret to render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec<'a> {
    pub name: String,
    pub namespace: &'a str,
    /// `kubernetes.io/tls` or `Opaque`.
    pub kind: &'static str,
    /// (key, value) pairs, e.g. `("tls.crt", PEM)`.
    pub data: Vec<(&'static str, String)>,
}

/// Renders Secrets as one multi-document YAML manifest (pure).
pub fn render(secrets: &[SecretSpec<'_>]) -> String {
    let mut out = String::new();
    for s in secrets {
        out.push_str("---\napiVersion: v1\nkind: Secret\nmetadata:\n");
        out.push_str(&format!(
            "  name: {}\n  namespace: {}\n",
            s.name, s.namespace
        ));
        out.push_str("  labels:\n    app.kubernetes.io/part-of: edgetunnel\n");
        out.push_str(&format!("type: {}\nstringData:\n", s.kind));
        for (key, value) in &s.data {
            out.push_str(&format!("  {key}: |\n"));
            for line in value.lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The Secrets of a new cluster: CA, CA key, server and proxy-client certificates.
pub fn cluster_secrets<'a>(
    ca: &CertificateAuthority,
    server: &IssuedCert,
    proxy: &IssuedCert,
    peer: &IssuedCert,
    namespace: &'a str,
) -> Vec<SecretSpec<'a>> {
    let ca_crt = ca.cert_pem().to_owned();
    let tls = |name: &str, c: &IssuedCert| SecretSpec {
        name: name.to_owned(),
        namespace,
        kind: "kubernetes.io/tls",
        data: vec![
            ("tls.crt", c.cert_pem.clone()),
            ("tls.key", c.key_pem.clone()),
            ("ca.crt", ca_crt.clone()),
        ],
    };
    vec![
        SecretSpec {
            name: "tunnel-ca".into(),
            namespace,
            kind: "Opaque",
            data: vec![("ca.crt", ca_crt.clone())],
        },
        SecretSpec {
            name: "tunnel-ca-key".into(),
            namespace,
            kind: "Opaque",
            data: vec![("ca.key", ca.key_pem())],
        },
        tls("tunnel-server-tls", server),
        tls("tunnel-proxy-client", proxy),
        SecretSpec {
            name: "tunnel-server-peer".into(),
            namespace,
            kind: "Opaque",
            data: vec![
                ("peer.crt", peer.cert_pem.clone()),
                ("peer.key", peer.key_pem.clone()),
            ],
        },
    ]
}

/// `certs init --output-format secret`: `secrets.yaml` plus the CA as PEM; returns the paths.
pub fn init(
    dir: &Path,
    server_name: &str,
    server_ips: &[IpAddr],
    namespace: &str,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let paths = [
        dir.join("secrets.yaml"),
        dir.join(CA_CERT_FILE),
        dir.join(CA_KEY_FILE),
    ];
    refuse_overwrite(&paths, force)?;
    let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY)?;
    let server = ca.issue_server(server_name, server_ips, DEFAULT_CERT_VALIDITY)?;
    let proxy = ca.issue_client(DEFAULT_PROXY_CLIENT_CN, DEFAULT_CERT_VALIDITY)?;
    let peer = ca.issue_peer(DEFAULT_CERT_VALIDITY)?;
    let manifest = render(&cluster_secrets(&ca, &server, &proxy, &peer, namespace));
    write(
        dir,
        &paths[0],
        manifest.as_bytes(),
        certs::atomic_file::KEY_MODE,
    )?;
    write(
        dir,
        &paths[1],
        ca.cert_pem().as_bytes(),
        certs::atomic_file::CERT_MODE,
    )?;
    write(
        dir,
        &paths[2],
        ca.key_pem().as_bytes(),
        certs::atomic_file::KEY_MODE,
    )?;
    Ok(paths.to_vec())
}

/// `certs agent --output-format secret`: `agent-<node>.secret.yaml`, signed by the CA in `dir`.
pub fn agent(
    dir: &Path,
    identity: &NodeIdentity,
    ttl: Duration,
    namespace: &str,
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    let path = dir.join(format!("agent-{}.secret.yaml", identity.node_name));
    refuse_overwrite(std::slice::from_ref(&path), force)?;
    let ca = CertificateAuthority::from_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))?;
    let issued = ca.issue_agent(identity, ttl)?;
    let spec = SecretSpec {
        name: format!("tunnel-agent-{}", identity.node_name),
        namespace,
        kind: "kubernetes.io/tls",
        data: vec![
            ("tls.crt", issued.cert_pem),
            ("tls.key", issued.key_pem),
            ("ca.crt", ca.cert_pem().to_owned()),
        ],
    };
    write(
        dir,
        &path,
        render(&[spec]).as_bytes(),
        certs::atomic_file::KEY_MODE,
    )?;
    Ok(vec![path])
}

fn refuse_overwrite(paths: &[PathBuf], force: bool) -> Result<(), CertError> {
    match paths
        .iter()
        .find(|p| !force && p.symlink_metadata().is_ok())
    {
        Some(p) => Err(CertError::WouldOverwrite(p.clone())),
        None => Ok(()),
    }
}

fn write(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    certs::atomic_file::write_atomic(path, bytes, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_hold_the_pem_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let written = init(dir.path(), "tunnel.example", &[], "edgetunnel", false).unwrap();
        let text = std::fs::read_to_string(&written[0]).unwrap();
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tunnel-ca",
                "tunnel-ca-key",
                "tunnel-server-tls",
                "tunnel-proxy-client",
                "tunnel-server-peer"
            ]
        );
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        assert_eq!(docs[0]["stringData"]["ca.crt"].as_str().unwrap(), ca_pem);
        assert_eq!(docs[2]["type"].as_str().unwrap(), "kubernetes.io/tls");
        // The server certificate in the Secret works with the CA PEM left on disk.
        let crt = docs[2]["stringData"]["tls.crt"].as_str().unwrap();
        let key = docs[2]["stringData"]["tls.key"].as_str().unwrap();
        std::fs::write(dir.path().join("s.crt"), crt).unwrap();
        std::fs::write(dir.path().join("s.key"), key).unwrap();
        certs::load_cert_and_key(&dir.path().join("s.crt"), &dir.path().join("s.key")).unwrap();
        assert!(!dir.path().join("server.crt").exists());
        // Never overwritten without --force.
        let err = init(dir.path(), "x", &[], "edgetunnel", false).unwrap_err();
        assert!(matches!(err, CertError::WouldOverwrite(_)));

        let id = NodeIdentity::new("edge-1", vec!["10.0.0.1".parse().unwrap()]).unwrap();
        let p = agent(dir.path(), &id, Duration::from_secs(3600), "ns", false).unwrap();
        let text = std::fs::read_to_string(&p[0]).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(
            doc["metadata"]["name"].as_str().unwrap(),
            "tunnel-agent-edge-1"
        );
        assert_eq!(doc["metadata"]["namespace"].as_str().unwrap(), "ns");
    }
}
