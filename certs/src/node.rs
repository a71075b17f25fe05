//! Who an edge node is: its name and addresses, and the rules a node name must follow.

use std::net::IpAddr;

use crate::CertError;

/// Longest node name Kubernetes accepts (a DNS-1123 subdomain).
const MAX_NODE_NAME_LEN: usize = 253;

/// The identity an agent certificate carries: the Kubernetes node name and its IPs.
///
/// The server routes tunnels by `node_name`, so it must match the `Node` object's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Kubernetes node name (a DNS-1123 subdomain).
    pub node_name: String,
    /// Node IPs, in the order they appear in the certificate's SANs.
    pub node_ips: Vec<IpAddr>,
}

impl NodeIdentity {
    /// Builds an identity after checking that `node_name` is a valid node name.
    pub fn new(node_name: impl Into<String>, node_ips: Vec<IpAddr>) -> Result<Self, CertError> {
        let node_name = node_name.into();
        validate_node_name(&node_name)?;
        Ok(Self {
            node_name,
            node_ips,
        })
    }
}

/// Checks that `name` is a DNS-1123 subdomain, the rule Kubernetes applies to node names.
///
/// Lowercase alphanumerics, '-' and '.', at most 253 characters, every dot-separated label
/// starting and ending with an alphanumeric. Node names also end up in file names
/// (`agent-<node>.crt`), which this rule keeps safe.
pub fn validate_node_name(name: &str) -> Result<(), CertError> {
    let invalid = |reason: &str| CertError::InvalidNodeName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(invalid("must be no more than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(invalid(
                "must not contain empty labels ('..' or a leading/trailing '.')",
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(&format!(
                "character {c:?} not allowed: use lowercase letters, digits, '-' and '.'"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid(
                "each '.'-separated part must start and end with a letter or digit",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_node_names() {
        for name in [
            "a",
            "node-1",
            "edge01.example.com",
            "0",
            "ip-10-0-0-1.ec2.internal",
            &"a".repeat(253),
        ] {
            assert!(validate_node_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn rejects_invalid_node_names() {
        for name in [
            "",
            "Node1",
            "-node",
            "node-",
            "node..a",
            ".node",
            "node.",
            "a.-b",
            "node_1",
            "node/1",
            "../etc",
            "nöde",
            "node 1",
            &"a".repeat(254),
        ] {
            match validate_node_name(name) {
                Err(CertError::InvalidNodeName { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name:?}: expected InvalidNodeName, got {other:?}"),
            }
        }
    }

    #[test]
    fn new_validates() {
        assert!(NodeIdentity::new("edge-1", vec![]).is_ok());
        assert!(matches!(
            NodeIdentity::new("Edge_1", vec![]),
            Err(CertError::InvalidNodeName { .. })
        ));
    }
}
