//! `tunnel-agent check-config [FLAGS]`: parse the flags and `--config` file exactly as the
//! agent would (same [`crate::config::Cli`], same [`AgentConfig::try_from`]), then load and
//! cross-check the certificates and print what would run, without dialing anything.
//!
//! The agent certificate must go with its key, be inside its validity window, carry the
//! node name the agent registers (`--node-name`, default the hostname: the server refuses
//! any other) and every `--node-ip`, and be accepted by `--server-ca` as a client
//! certificate (one CA signs the server and the agents, as `certs init` makes it). With
//! `--bootstrap-token` and no certificate files yet, the agent would enroll: then only the
//! CA and the token are checked.

use std::fmt::Write as _;
use std::path::Path;

use certs::check::{self, CheckError, Usage};
use node_proxy::settings::{ApiserverTarget, HubSetting};
use rustls::pki_types::UnixTime;

use crate::config::AgentConfig;

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
    /// The certificate names another node.
    #[error("{cert}: certificate is for node {in_cert:?} but the agent would register as {wanted:?} ({origin}); the server refuses a node name its certificate does not carry")]
    NameMismatch {
        cert: String,
        in_cert: String,
        wanted: String,
        origin: &'static str,
    },
    /// A `--node-ip` the certificate does not carry.
    #[error("{cert}: --node-ip {ip} is not in the certificate (it carries {in_cert:?})")]
    IpMismatch {
        cert: String,
        ip: std::net::IpAddr,
        in_cert: Vec<std::net::IpAddr>,
    },
    /// Only one of the two files exists.
    #[error("{present} exists but {missing} does not: give both files (or neither, with --bootstrap-token)")]
    HalfPair { present: String, missing: String },
    /// No files and no token: the agent would wait forever.
    #[error("{cert} and {key} do not exist and there is no --bootstrap-token to enroll with")]
    NothingToUse { cert: String, key: String },
}

/// Checks `cfg` at time `now`; `hostname` is the default node name. Returns the report.
pub fn check(
    cfg: &AgentConfig,
    hostname: Option<String>,
    now: UnixTime,
) -> Result<String, CheckConfigError> {
    let mut out = String::new();
    let ca = &cfg.server_ca;
    for cert in certs::load_cert_chain(ca)? {
        check::check_validity(ca, &cert, now)?;
    }
    certs::load_root_store(ca)?;
    let (wanted, source) = match (&cfg.node_name, hostname) {
        (Some(n), _) => (Some(n.clone()), "--node-name"),
        (None, Some(h)) => (Some(h), "the hostname"),
        (None, None) => (None, "the certificate"),
    };
    let (cert_path, key_path) = (&cfg.tls_cert, &cfg.tls_key);
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => {
            let Some(token) = &cfg.bootstrap_token else {
                return Err(CheckConfigError::NothingToUse {
                    cert: cert_path.display().to_string(),
                    key: key_path.display().to_string(),
                });
            };
            let _ = writeln!(
                out,
                "no certificate yet: would enroll as node {} with bootstrap token {} at {}:{} (server verified with {}), writing {} and {}",
                wanted.as_deref().unwrap_or("?"),
                token.id(),
                cfg.server_host,
                cfg.server_port,
                ca.display(),
                cert_path.display(),
                key_path.display()
            );
        }
        (true, false) | (false, true) => {
            let (present, missing) = if cert_path.exists() {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            return Err(CheckConfigError::HalfPair {
                present: present.display().to_string(),
                missing: missing.display().to_string(),
            });
        }
        (true, true) => {
            let line = check_agent_cert(cfg, wanted.as_deref(), source, now)?;
            out.push_str(&line);
        }
    }
    let servers: Vec<String> = cfg
        .servers
        .iter()
        .map(|s| format!("{}:{}", s.host, s.port))
        .collect();
    let _ = writeln!(
        out,
        "server {} (every address one connection, resolved every {:?}) over {:?}, connect timeout {:?}, keep-alive {:?}, idle timeout {:?}, congestion control {}",
        servers.join(", "),
        cfg.server_resolve_interval,
        cfg.transport,
        cfg.connect_timeout,
        cfg.keepalive,
        cfg.idle_timeout,
        cfg.congestion_control.as_str()
    );
    if cfg.allow.is_empty() {
        let _ = writeln!(
            out,
            "allowlist: each node IP and 127.0.0.1 at 10250 and 10255 (default)"
        );
    } else {
        let rules: Vec<String> = cfg.allow.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "allowlist: {}", rules.join(", "));
    }
    let _ = writeln!(
        out,
        "admin (/metrics /healthz /readyz): tcp/{}",
        cfg.admin_addr
    );
    match &cfg.hub {
        HubSetting::Off(reason) => {
            let _ = writeln!(out, "node proxy: off ({reason})");
        }
        HubSetting::On(hub) => {
            if hub.client_cert != cfg.tls_cert || hub.client_key != cfg.tls_key {
                let (chain, _) = certs::load_cert_and_key(&hub.client_cert, &hub.client_key)?;
                check::check_validity(&hub.client_cert, &chain[0], now)?;
            }
            if let Some(ca) = &hub.apiserver_ca {
                certs::load_root_store(ca)?;
            }
            let upstream = match &hub.upstream {
                ApiserverTarget::Direct { host, port } => format!("https://{host}:{port}"),
                ApiserverTarget::Tunnel => "the tunnel (the server's --apiserver)".to_owned(),
            };
            let _ = writeln!(
                out,
                "node proxy: http://{} -> {upstream} (TLS name {}, CA {}), client certificate {}, cache {} (max {} bytes)",
                hub.listen,
                hub.server_name,
                hub.apiserver_ca
                    .as_deref()
                    .map_or("the system trust store".into(), |p| p.display().to_string()),
                hub.client_cert.display(),
                hub.cache_dir.display(),
                hub.cache_max_bytes
            );
        }
    }
    Ok(out)
}

/// The agent certificate: key, validity, CA, node name and IPs.
fn check_agent_cert(
    cfg: &AgentConfig,
    wanted: Option<&str>,
    source: &'static str,
    now: UnixTime,
) -> Result<String, CheckConfigError> {
    let cert = &cfg.tls_cert;
    let (chain, _key) = certs::load_cert_and_key(cert, &cfg.tls_key)?;
    let leaf = &chain[0];
    let s = check::check_validity(cert, leaf, now)?;
    let id = certs::agent_identity(leaf).map_err(|e| certs::CertError::InvalidPem {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })?;
    check_identity(cert, &id, wanted, source, &cfg.node_ips)?;
    check::check_signed_by(cert, &chain, &cfg.server_ca, Usage::Client, now)?;
    Ok(format!(
        "agent certificate {} for node {} (IPs {:?}; valid until {}), key {} matches, accepted by {}\n",
        cert.display(),
        id.node_name,
        id.node_ips,
        s.not_after,
        cfg.tls_key.display(),
        cfg.server_ca.display()
    ))
}

/// The name the agent registers and its `--node-ip`s must be in the certificate.
fn check_identity(
    cert: &Path,
    id: &certs::NodeIdentity,
    wanted: Option<&str>,
    source: &'static str,
    node_ips: &[std::net::IpAddr],
) -> Result<(), CheckConfigError> {
    if let Some(w) = wanted {
        if w != id.node_name {
            return Err(CheckConfigError::NameMismatch {
                cert: cert.display().to_string(),
                in_cert: id.node_name.clone(),
                wanted: w.to_owned(),
                origin: source,
            });
        }
    }
    if let Some(ip) = node_ips.iter().find(|ip| !id.node_ips.contains(ip)) {
        return Err(CheckConfigError::IpMismatch {
            cert: cert.display().to_string(),
            ip: *ip,
            in_cert: id.node_ips.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> certs::NodeIdentity {
        certs::NodeIdentity::new("edge-1", vec!["10.0.0.1".parse().unwrap()]).unwrap()
    }

    #[test]
    fn name_from_flag_or_hostname_must_match() {
        let p = Path::new("a.crt");
        check_identity(p, &id(), Some("edge-1"), "--node-name", &[]).unwrap();
        check_identity(p, &id(), None, "the certificate", &[]).unwrap();
        let err = check_identity(p, &id(), Some("edge-2"), "the hostname", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificate is for node \"edge-1\" but the agent would register as \"edge-2\" (the hostname)"),
            "{err}"
        );
    }

    #[test]
    fn node_ips_must_be_in_the_certificate() {
        let p = Path::new("a.crt");
        let ok = ["10.0.0.1".parse().unwrap()];
        check_identity(p, &id(), None, "x", &ok).unwrap();
        let bad = ["10.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap()];
        let err = check_identity(p, &id(), None, "x", &bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--node-ip 10.0.0.9 is not in the certificate"),
            "{err}"
        );
    }
}
