//! Deciding whether an agent's hello matches its certificate (pure logic).
//!
//! The certificate is the only source of truth: an agent may announce a
//! subset of its certificate's IPs, never another name or a foreign IP.

use std::net::IpAddr;

use certs::NodeIdentity;
use proto::{Hello, RejectReason, PROTOCOL_VERSION};

/// What the registry records for an accepted agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub agent_version: String,
    /// The agent process's session id (capability `session=<id>`): the same
    /// id on a new connection means the agent moved transports, not that a
    /// second agent claims the node.
    pub session: Option<String>,
}

/// Why a hello was refused: the code sent to the agent and a sentence for both logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

/// Checks `hello` against the identity from the agent's verified certificate.
pub fn check_hello(hello: &Hello, cert: &NodeIdentity) -> Result<Registration, Rejection> {
    if hello.version != PROTOCOL_VERSION {
        return Err(Rejection {
            reason: RejectReason::UnsupportedVersion,
            message: format!(
                "agent speaks protocol version {}, this server speaks {}",
                hello.version, PROTOCOL_VERSION
            ),
        });
    }
    if hello.node_name != cert.node_name {
        return Err(Rejection {
            reason: RejectReason::NameMismatch,
            message: format!(
                "agent claims node {:?} but its certificate is for node {:?}",
                hello.node_name, cert.node_name
            ),
        });
    }
    if let Some(ip) = hello.node_ips.iter().find(|ip| !cert.node_ips.contains(ip)) {
        return Err(Rejection {
            reason: RejectReason::IpNotInCertificate,
            message: format!(
                "agent for node {:?} claims IP {ip}, which is not in its certificate (allowed: {})",
                cert.node_name,
                join(&cert.node_ips)
            ),
        });
    }
    let mut ips = if hello.node_ips.is_empty() {
        cert.node_ips.clone()
    } else {
        hello.node_ips.clone()
    };
    ips.dedup();
    Ok(Registration {
        node: cert.node_name.clone(),
        ips,
        agent_version: hello.agent_version.clone(),
        session: hello
            .capabilities
            .iter()
            .find_map(|c| c.strip_prefix("session="))
            .map(str::to_string),
    })
}

fn join(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none".into();
    }
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> NodeIdentity {
        NodeIdentity {
            node_name: "edge-a".into(),
            node_ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        }
    }

    fn hello(name: &str, ips: &[&str]) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node_name: name.into(),
            node_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            agent_version: "test".into(),
            capabilities: vec![],
        }
    }

    #[test]
    fn accepts_subset_of_certificate_ips() {
        let r = check_hello(&hello("edge-a", &["fd00::5"]), &cert()).unwrap();
        assert_eq!(r.node, "edge-a");
        assert_eq!(r.ips, vec!["fd00::5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn session_capability_is_recorded() {
        let mut h = hello("edge-a", &[]);
        assert_eq!(check_hello(&h, &cert()).unwrap().session, None);
        h.capabilities = vec!["future-thing".into(), "session=abc123".into()];
        assert_eq!(
            check_hello(&h, &cert()).unwrap().session.as_deref(),
            Some("abc123")
        );
    }

    #[test]
    fn empty_ip_list_means_the_certificate_ips() {
        let r = check_hello(&hello("edge-a", &[]), &cert()).unwrap();
        assert_eq!(r.ips, cert().node_ips);
    }

    #[test]
    fn refuses_another_nodes_name() {
        let e = check_hello(&hello("edge-b", &[]), &cert()).unwrap_err();
        assert_eq!(e.reason, RejectReason::NameMismatch);
        assert!(e.message.contains("edge-b") && e.message.contains("edge-a"));
    }

    #[test]
    fn refuses_a_foreign_ip() {
        let e = check_hello(&hello("edge-a", &["10.0.0.5", "10.9.9.9"]), &cert()).unwrap_err();
        assert_eq!(e.reason, RejectReason::IpNotInCertificate);
        assert!(e.message.contains("10.9.9.9"), "{}", e.message);
    }

    #[test]
    fn refuses_other_protocol_versions() {
        let mut h = hello("edge-a", &[]);
        h.version = 99;
        assert_eq!(
            check_hello(&h, &cert()).unwrap_err().reason,
            RejectReason::UnsupportedVersion
        );
    }
}
