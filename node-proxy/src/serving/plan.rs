//! The sans-IO half of the serving certificate: what the CSR says, how the
//! apiserver's answer reads, whether an issued (or stored) certificate is
//! usable, and when to renew it.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

/// The signer kube-controller-manager signs kubelet serving certificates
/// with (the cluster CA, which pods trust).
pub const SIGNER: &str = "kubernetes.io/kubelet-serving";

/// Where CSRs are created and read.
pub const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// Key usages the CSR asks for, as kubelet's serving CSR does.
pub const USAGES: [&str; 2] = ["digital signature", "server auth"];

/// Longest Kubernetes object name.
const MAX_NAME: usize = 253;

/// The CSR object's name: `edgetunnel-hub-<node>-<suffix>` (8 hex digits),
/// the node part shortened when the whole would be too long.
pub fn csr_name(node: &str, suffix: u32) -> String {
    let tail = format!("-{suffix:08x}");
    let prefix = "edgetunnel-hub-";
    let room = MAX_NAME - prefix.len() - tail.len();
    let node: String = node.chars().take(room).collect();
    let node = node.trim_end_matches(['-', '.']);
    format!("{prefix}{node}{tail}")
}

/// The `CertificateSigningRequest` to POST for `csr_pem`.
pub fn csr_object(name: &str, csr_pem: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem),
            "signerName": SIGNER,
            "usages": USAGES,
        },
    })
}

/// Where a CSR stands, read from its `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrState {
    /// Neither issued nor refused yet (approval or signing pending).
    Pending,
    /// `status.certificate`: the PEM chain.
    Issued(String),
    /// A `Denied` or `Failed` condition, with its reason and message.
    Refused(String),
}

/// Reads a CSR object as the apiserver returned it.
pub fn csr_state(obj: &Value) -> Result<CsrState, String> {
    let status = &obj["status"];
    for c in status["conditions"].as_array().into_iter().flatten() {
        let kind = c["type"].as_str().unwrap_or_default();
        let on = c["status"].as_str().is_none_or(|s| s == "True");
        if on && (kind == "Denied" || kind == "Failed") {
            let reason = c["reason"].as_str().unwrap_or("no reason given");
            let message = c["message"].as_str().unwrap_or_default();
            return Ok(CsrState::Refused(
                format!("{kind}: {reason} {message}").trim().to_string(),
            ));
        }
    }
    match status["certificate"].as_str() {
        None | Some("") => Ok(CsrState::Pending),
        Some(b64) => {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("status.certificate is not base64: {e}"))?;
            String::from_utf8(pem)
                .map(CsrState::Issued)
                .map_err(|_| "status.certificate is not PEM text".to_string())
        }
    }
}

/// A usable certificate's validity, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// Checks an issued (or stored) chain before it is served: the key belongs
/// to the leaf, the leaf names this node and the listener's IP, and it has
/// not expired.
pub fn check_issued(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    node: &str,
    ip: IpAddr,
    now: i64,
) -> Result<Validity, String> {
    let leaf = chain.first().ok_or("the chain holds no certificate")?;
    certs::load::check_key_matches(chain, key)
        .map_err(|e| format!("the certificate is not for our key: {e}"))?;
    let id = certs::agent_identity(leaf).map_err(|e| e.to_string())?;
    if id.node_name != node {
        return Err(format!(
            "the certificate is for node {:?}, not {node:?}",
            id.node_name
        ));
    }
    if !id.node_ips.contains(&ip) {
        return Err(format!(
            "the certificate's IP SANs {:?} do not include {ip}",
            id.node_ips
        ));
    }
    let validity = Validity {
        not_before: certs::not_before_unix(leaf).map_err(|e| e.to_string())?,
        not_after: certs::not_after_unix(leaf).map_err(|e| e.to_string())?,
    };
    if validity.not_after <= now {
        return Err(format!("the certificate expired at {}", validity.not_after));
    }
    Ok(validity)
}

/// When to ask for the next certificate: at 70 to 90 % of the lifetime
/// (`jitter` in 0..=1 picks where), as kubelet does, so a fleet issued at
/// once does not renew at once.
pub fn renew_at(v: Validity, jitter: f64) -> i64 {
    let lifetime = (v.not_after - v.not_before).max(0) as f64;
    let fraction = 0.7 + 0.2 * jitter.clamp(0.0, 1.0);
    v.not_before + (lifetime * fraction).round() as i64
}

/// Wait before the `failures`-th retry of a failed request: 2 s doubling to 60 s.
pub fn retry_delay(failures: u32) -> Duration {
    let secs = 2u64.saturating_mul(1 << failures.saturating_sub(1).min(5));
    Duration::from_secs(secs.min(60))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn names_fit_and_say_whose() {
        assert_eq!(csr_name("edge-1", 0xab), "edgetunnel-hub-edge-1-000000ab");
        let long = "n".repeat(300);
        let name = csr_name(&long, 1);
        assert_eq!(name.len(), MAX_NAME);
        assert!(name.ends_with("-00000001"));
    }

    #[test]
    fn the_object_asks_the_kubelet_serving_signer() {
        let o = csr_object("x", "PEM");
        assert_eq!(o["spec"]["signerName"], SIGNER);
        assert_eq!(
            o["spec"]["usages"],
            json!(["digital signature", "server auth"])
        );
        assert_eq!(o["spec"]["request"], "UEVN");
    }

    #[test]
    fn states_from_status() {
        assert_eq!(csr_state(&json!({"spec": {}})), Ok(CsrState::Pending));
        let approved = json!({"status": {"conditions": [{"type": "Approved", "status": "True"}]}});
        assert_eq!(csr_state(&approved), Ok(CsrState::Pending));
        let issued = json!({"status": {"certificate": "UEVN",
            "conditions": [{"type": "Approved", "status": "True"}]}});
        assert_eq!(csr_state(&issued), Ok(CsrState::Issued("PEM".into())));
        let denied = json!({"status": {"conditions": [{"type": "Denied", "status": "True",
            "reason": "Foreign", "message": "not this node"}]}});
        assert_eq!(
            csr_state(&denied),
            Ok(CsrState::Refused("Denied: Foreign not this node".into()))
        );
        let failed =
            json!({"status": {"conditions": [{"type": "Failed", "reason": "SignerError"}]}});
        assert!(
            matches!(csr_state(&failed), Ok(CsrState::Refused(r)) if r.contains("SignerError"))
        );
        assert!(csr_state(&json!({"status": {"certificate": "***"}})).is_err());
    }

    #[test]
    fn renewal_falls_between_70_and_90_percent() {
        let v = Validity {
            not_before: 1000,
            not_after: 2000,
        };
        assert_eq!(renew_at(v, 0.0), 1700);
        assert_eq!(renew_at(v, 1.0), 1900);
        assert_eq!(renew_at(v, 0.5), 1800);
        assert_eq!(renew_at(v, 7.0), 1900, "jitter is clamped");
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        let d: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(d, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    fn issued(
        node: &str,
        ip: &str,
        secs: u64,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(3600)).unwrap();
        let id = certs::NodeIdentity::new(node, vec![ip.parse().unwrap()]).unwrap();
        let req = certs::agent_key_request(&id).unwrap();
        let pem = ca
            .sign_agent_csr(&req.csr_pem, &id, Duration::from_secs(secs), None)
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(req.key_pem.as_bytes()).unwrap();
        (chain, key)
    }

    #[test]
    fn issued_chains_are_checked() {
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let (chain, key) = issued("edge-1", "127.0.0.5", 600);
        let now = certs::not_before_unix(&chain[0]).unwrap() + 1;
        let v = check_issued(&chain, &key, "edge-1", ip, now).unwrap();
        assert!(v.not_after > now);
        let e = check_issued(&chain, &key, "edge-2", ip, now).unwrap_err();
        assert!(e.contains("edge-2"), "{e}");
        let e = check_issued(&chain, &key, "edge-1", "10.0.0.1".parse().unwrap(), now).unwrap_err();
        assert!(e.contains("10.0.0.1"), "{e}");
        let e = check_issued(&chain, &key, "edge-1", ip, v.not_after).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let (_, other_key) = issued("edge-1", "127.0.0.5", 600);
        let e = check_issued(&chain, &other_key, "edge-1", ip, now).unwrap_err();
        assert!(e.contains("key"), "{e}");
        assert!(check_issued(&[], &key, "edge-1", ip, now).is_err());
    }
}
