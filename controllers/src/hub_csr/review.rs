//! Which kubelet-serving CSRs are the hub's: the sans-IO review of one CSR.
//!
//! The agent asks, with the node's own credentials, for a serving certificate of its HTTPS
//! node-proxy listener: subject `CN=system:node:NAME, O=system:nodes`, IP SANs that are
//! exactly listener addresses, usages digital signature + server auth (key encipherment
//! tolerated). Kubelet's own serving CSRs use the same signer and are someone else's to
//! approve: anything that is not exactly the hub's is left alone, never denied.

use std::net::IpAddr;

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The signer of serving certificates chaining to the cluster CA.
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The group every node's credentials carry.
pub const NODES_GROUP: &str = "system:nodes";
/// Prefix of a node's user name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The outcome of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A hub serving CSR of this node: approve it.
    Approve { node: String },
    /// Approved, denied or failed already: nothing to do.
    Decided,
    /// Not a hub serving CSR (or not an acceptable one): left alone, for this reason.
    Ignore(String),
}

fn ignore(reason: impl Into<String>) -> Decision {
    Decision::Ignore(reason.into())
}

/// Reviews one CSR against the IP SANs a listener may ask for.
pub fn review(csr: &CertificateSigningRequest, allowed_ips: &[IpAddr]) -> Decision {
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
        });
    if decided {
        return Decision::Decided;
    }
    let spec = &csr.spec;
    if spec.signer_name != SIGNER {
        return ignore(format!("signer {} is not {SIGNER}", spec.signer_name));
    }
    let Some(username) = spec.username.as_deref() else {
        return ignore("no spec.username");
    };
    let Some(node) = username
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
    else {
        return ignore(format!("requested by {username}, not a node"));
    };
    let in_nodes = spec
        .groups
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g == NODES_GROUP));
    if !in_nodes {
        return ignore(format!("requester {username} is not in {NODES_GROUP}"));
    }
    if let Err(reason) = check_usages(spec.usages.as_deref().unwrap_or_default()) {
        return ignore(reason);
    }
    match check_request(&spec.request.0, username, allowed_ips) {
        Ok(()) => Decision::Approve {
            node: node.to_owned(),
        },
        Err(reason) => ignore(reason),
    }
}

/// digital signature and server auth, optionally key encipherment, nothing else.
fn check_usages(usages: &[String]) -> Result<(), String> {
    for u in usages {
        if !matches!(
            u.as_str(),
            "digital signature" | "server auth" | "key encipherment"
        ) {
            return Err(format!("usage {u:?} is not for a serving certificate"));
        }
    }
    for required in ["digital signature", "server auth"] {
        if !usages.iter().any(|u| u == required) {
            return Err(format!("usage {required:?} missing"));
        }
    }
    Ok(())
}

/// The PKCS#10 request: subject CN = the requester, O = [system:nodes], IP SANs only, all
/// allowed.
fn check_request(pem: &[u8], username: &str, allowed_ips: &[IpAddr]) -> Result<(), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("spec.request is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!("spec.request holds a {}", pem.label));
    }
    let (_, req) = X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("spec.request is not a PKCS#10 request: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let cns: Vec<&str> = subject
        .iter_common_name()
        .map(|a| a.as_str().unwrap_or("\u{fffd}"))
        .collect();
    if cns != [username] {
        return Err(format!(
            "subject CN {cns:?} is not the requester {username}"
        ));
    }
    let orgs: Vec<&str> = subject
        .iter_organization()
        .map(|a| a.as_str().unwrap_or("\u{fffd}"))
        .collect();
    if orgs != [NODES_GROUP] {
        return Err(format!("subject O {orgs:?} is not [{NODES_GROUP}]"));
    }
    let mut ips = Vec::new();
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::IPAddress(bytes) => ips.push(ip_of(bytes)?),
                    other => return Err(format!("SAN {other} is not an IP address")),
                }
            }
        }
    }
    if ips.is_empty() {
        return Err("no IP SAN".into());
    }
    if let Some(ip) = ips.iter().find(|ip| !allowed_ips.contains(ip)) {
        return Err(format!("IP SAN {ip} is not a hub listener address"));
    }
    Ok(())
}

fn ip_of(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| "IP SAN")?,
        )),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| "IP SAN")?,
        )),
        n => Err(format!("IP SAN of {n} bytes")),
    }
}

#[cfg(test)]
mod tests;
