//! `tunnel-server check-config [FLAGS]`: parse the flags and `--config` file exactly as
//! serving would (same [`crate::config::Cli`], same [`ServerConfig::try_from`]), then load and
//! cross-check every certificate and print what would run, without binding anything.
//!
//! Certificates are checked the way peers will check them: the server certificate with its
//! key, inside its validity window, and accepted by `--agent-ca` as a TLS server certificate
//! (one CA signs the server and the agents, as `certs init` makes it: agents are given that CA
//! as `--server-ca`); `--agent-ca-key` must be the key of `--agent-ca`.

use std::fmt::Write as _;

use certs::check::{self, CheckError, Usage};
use rustls::pki_types::UnixTime;

use crate::config::ServerConfig;

/// The subcommand's name on the command line.
pub const SUBCOMMAND: &str = "check-config";

/// Why the configuration would not run.
#[derive(Debug, thiserror::Error)]
pub enum CheckConfigError {
    /// A certificate, key or CA problem.
    #[error(transparent)]
    Check(#[from] CheckError),
    /// A file could not be loaded.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// `--token-dir` is not a directory.
    #[error("--token-dir {0}: not a directory")]
    TokenDir(String),
    /// `--kubeconfig` cannot be read or names no cluster.
    #[error(transparent)]
    Kubeconfig(#[from] controllers::ClientError),
    /// `--peer-cert` is not a peer certificate (`certs peer` writes one).
    #[error("--peer-cert {0}: not a peer certificate (O=edgetunnel:replicas); create one with `tunnel-server certs peer`")]
    NotPeerCertificate(String),
}

/// Checks `cfg` at time `now`; returns the report of what would run.
pub fn check(cfg: &ServerConfig, now: UnixTime) -> Result<String, CheckConfigError> {
    let mut out = String::new();
    let (chain, _key) = certs::load_cert_and_key(&cfg.tls_cert, &cfg.tls_key)?;
    let leaf = &chain[0];
    let s = check::check_validity(&cfg.tls_cert, leaf, now)?;
    check::check_signed_by(&cfg.tls_cert, &chain, &cfg.agent_ca, Usage::Server, now)?;
    let _ = writeln!(
        out,
        "server certificate {} ({}; {}; valid until {}), key {} matches, accepted by {}",
        cfg.tls_cert.display(),
        s.subject,
        s.sans.join(", "),
        s.not_after,
        cfg.tls_key.display(),
        cfg.agent_ca.display()
    );
    check_ca_file(&cfg.agent_ca, now)?;
    if let Some(key) = &cfg.agent_ca_key {
        certs::CertificateAuthority::from_files(&cfg.agent_ca, key)?;
        let _ = writeln!(
            out,
            "agent CA key {} matches {}: enrollment and renewal sign certificates valid {:?}",
            key.display(),
            cfg.agent_ca.display(),
            cfg.agent_cert_ttl
        );
    }
    if let Some(dir) = &cfg.token_dir {
        if !dir.is_dir() {
            return Err(CheckConfigError::TokenDir(dir.display().to_string()));
        }
        let _ = writeln!(out, "bootstrap tokens from {}", dir.display());
    }
    let _ = writeln!(
        out,
        "agents: QUIC on udp/{a} and WebSocket on tcp/{a}, client certificates checked against {}",
        cfg.agent_ca.display(),
        a = cfg.agent_addr
    );
    let r = &cfg.replicas;
    let _ = writeln!(
        out,
        "replica {:?}, drain timeout {:?}",
        r.server_id, r.drain_timeout
    );
    if let Some((cert, key)) = &r.peer_cert {
        let (chain, _) = certs::load_cert_and_key(cert, key)?;
        check::check_signed_by(cert, &chain, &cfg.agent_ca, Usage::Client, now)?;
        if !certs::is_peer_certificate(&chain[0])? {
            return Err(CheckConfigError::NotPeerCertificate(
                cert.display().to_string(),
            ));
        }
        let _ = writeln!(
            out,
            "peers {} (every address one peer, resolved every {:?}), shown {}",
            r.peers.join(", "),
            r.peer_resolve_interval,
            cert.display()
        );
    }
    if let Some(uds) = &cfg.uds {
        let _ = writeln!(
            out,
            "front end (HTTP CONNECT + Konnectivity gRPC): unix socket {}",
            uds.display()
        );
    }
    if let (Some(addr), Some(ca)) = (cfg.proxy_addr, &cfg.proxy_client_ca) {
        check_ca_file(ca, now)?;
        let names = if cfg.proxy_client_names.is_empty() {
            "any certificate it signed".to_owned()
        } else {
            cfg.proxy_client_names.join(", ")
        };
        let _ = writeln!(
            out,
            "front end (HTTP CONNECT + Konnectivity gRPC): mTLS on tcp/{addr}, clients from {} ({names})",
            ca.display()
        );
    }
    if let Some(addr) = cfg.http_proxy_addr {
        let _ = writeln!(out, "plain-HTTP proxy for Prometheus: tcp/{addr}");
    }
    let _ = writeln!(
        out,
        "admin (/metrics /healthz /readyz /agents /sd): tcp/{}, /sd ports {:?}",
        cfg.admin_addr, cfg.sd_ports
    );
    for f in &cfg.forwards {
        let _ = writeln!(out, "forward tcp/{} -> {} {}", f.listen, f.node, f.target);
    }
    if let Some(api) = &cfg.apiserver {
        let _ = writeln!(out, "agents' --apiserver tunnel streams go to {api}");
    }
    if let Some(r) = &cfg.revocation_file {
        let _ = writeln!(out, "revocations from {}", r.display());
    }
    let c = &cfg.controllers;
    if c.any() {
        let api = match &c.kubeconfig {
            Some(path) => format!(
                "{} (kubeconfig {})",
                controllers::client::check_kubeconfig(path)?,
                path.display()
            ),
            None => "in-cluster configuration".to_owned(),
        };
        if c.autonomy {
            let _ = writeln!(out, "autonomy controller: tolerations of pods on nodes annotated edgetunnel.io/autonomy-duration, via {api}");
        }
        if let Some(ips) = &c.hub_csr_ips {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "hub CSR approver: kubelet-serving CSRs of nodes for IP SANs {}, via {api}",
                ips.join(", ")
            );
        }
    }
    Ok(out)
}

/// Every certificate in a CA bundle must be inside its validity window.
fn check_ca_file(path: &std::path::Path, now: UnixTime) -> Result<(), CheckConfigError> {
    certs::load_root_store(path)?;
    for cert in certs::load_cert_chain(path)? {
        check::check_validity(path, &cert, now)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn cfg(dir: &std::path::Path, extra: &[&str]) -> ServerConfig {
        let p = |n: &str| dir.join(n).display().to_string();
        let mut args = vec![
            "tunnel-server".to_owned(),
            format!("--tls-cert={}", p("server.crt")),
            format!("--tls-key={}", p("server.key")),
            format!("--agent-ca={}", p("ca.crt")),
        ];
        args.extend(
            extra
                .iter()
                .map(|s| s.replace("DIR", &dir.display().to_string())),
        );
        ServerConfig::try_from(Cli::try_parse_from(args).unwrap().run).unwrap()
    }

    #[test]
    fn peer_certificate_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        certs::init_cluster(d, "tunnel.example", &[], false).unwrap();
        certs::issue_peer_files(d, std::time::Duration::from_secs(3600), false).unwrap();
        let now = UnixTime::now();
        let peer = ["--peer=tunnel-peers:8132", "--server-id=r1"];
        let with = |cert: &str, key: &str| {
            let mut a = peer.to_vec();
            let (c, k) = (
                format!("--peer-cert=DIR/{cert}"),
                format!("--peer-key=DIR/{key}"),
            );
            a.extend([c.as_str(), k.as_str()]);
            check(&cfg(d, &a), now)
        };
        let report = with("peer.crt", "peer.key").unwrap();
        assert!(report.contains("replica \"r1\""), "{report}");
        assert!(report.contains("peers tunnel-peers:8132"), "{report}");
        // The proxy client certificate is another CA's; an agent's is no peer.
        let err = with("proxy-client.crt", "proxy-client.key").unwrap_err();
        assert!(err.to_string().contains("different CA"), "{err}");
        certs::issue_agent_files(
            d,
            &certs::NodeIdentity::new("edge-1", vec![]).unwrap(),
            false,
        )
        .unwrap();
        let err = with("agent-edge-1.crt", "agent-edge-1.key").unwrap_err();
        assert!(err.to_string().contains("not a peer certificate"), "{err}");
    }

    #[test]
    fn good_cluster_and_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        certs::init_cluster(d, "tunnel.example", &["10.1.1.1".parse().unwrap()], false).unwrap();
        let now = UnixTime::now();
        let report = check(
            &cfg(d, &["--uds=/run/x.sock", "--agent-ca-key=DIR/ca.key"]),
            now,
        )
        .unwrap();
        assert!(
            report.contains("DNS:tunnel.example, IP:10.1.1.1"),
            "{report}"
        );
        assert!(report.contains("unix socket /run/x.sock"), "{report}");

        // The proxy-client key is not the server's key.
        let err = check(&cfg(d, &["--tls-key=DIR/proxy-client.key"]), now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match the certificate"), "{err}");
        // A CA from another cluster.
        let other = tempfile::tempdir().unwrap();
        certs::init_cluster(other.path(), "x", &[], false).unwrap();
        let other_ca = other.path().join("ca.crt").display().to_string();
        let err = check(&cfg(d, &[&format!("--agent-ca={other_ca}")]), now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signed by a different CA"), "{err}");
        let other_key = other.path().join("ca.key").display().to_string();
        let err = check(&cfg(d, &[&format!("--agent-ca-key={other_key}")]), now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match the CA certificate"), "{err}");
        let err = check(
            &cfg(d, &["--token-dir=DIR/nope", "--agent-ca-key=DIR/ca.key"]),
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
