//! A CSR signer like kube-controller-manager's `csrsigning` controller for
//! `kubernetes.io/kubelet-serving`: CSRs of that signer that carry an
//! `Approved` condition and no `status.certificate` get one, signed by the
//! cluster CA (the fake's own, [`super::ApiserverPki`]) over the CSR's key,
//! subject and SANs, with the server-auth usage and a fixed lifetime.
//! Approval is not its business (an approver, or the test, writes the
//! condition); like the real signer it does not check what it signs.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{
    CertificateSigningRequestParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::resource::Res;
use super::server::{lock, Shared};

/// The signer this fake signs for.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// How often the store is scanned.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// A running signer; stops when dropped.
pub struct SignerHandle {
    task: JoinHandle<()>,
}

impl Drop for SignerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the signer could not start.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("CA key: {0}")]
    Key(rcgen::Error),
    #[error("CA certificate: {0}")]
    Cert(rcgen::Error),
}

pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    shared: Arc<Shared>,
    ca_cert_pem: &str,
    ca_key_pem: &str,
    lifetime: Duration,
) -> Result<SignerHandle, SignerError> {
    let key = KeyPair::from_pem(ca_key_pem).map_err(SignerError::Key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key).map_err(SignerError::Cert)?;
    let task = runtime.spawn(async move {
        let res = Res::certificate_signing_requests();
        loop {
            tokio::time::sleep(SCAN_INTERVAL).await;
            let pending: Vec<Value> = {
                let store = lock(&shared.store);
                store
                    .list(&res, None)
                    .iter()
                    .filter(|o| wants_certificate(o))
                    .map(|o| (**o).clone())
                    .collect()
            };
            for mut csr in pending {
                let outcome = sign(&csr, &issuer, lifetime);
                let status = csr["status"].as_object_mut();
                match (outcome, status) {
                    (Ok(pem), Some(status)) => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
                        status.insert("certificate".into(), b64.into());
                    }
                    (Err(reason), Some(status)) => {
                        let failed = serde_json::json!({"type": "Failed", "status": "True",
                            "reason": "SignerValidationFailure", "message": reason});
                        if let Some(c) = status.get_mut("conditions").and_then(Value::as_array_mut)
                        {
                            c.push(failed);
                        }
                    }
                    (_, None) => continue,
                }
                if let Err(e) = shared.mutate(|s| s.upsert(&res, csr)) {
                    tracing::warn!(component = "fake-signer", error = %e, "storing a signed CSR");
                }
            }
        }
    });
    Ok(SignerHandle { task })
}

/// Of our signer, approved, not yet signed or failed.
fn wants_certificate(csr: &Value) -> bool {
    let conditions = csr["status"]["conditions"].as_array();
    let has = |kind: &str| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] != "False")
    };
    csr["spec"]["signerName"] == KUBELET_SERVING
        && has("Approved")
        && !has("Failed")
        && csr["status"]["certificate"]
            .as_str()
            .is_none_or(str::is_empty)
}

/// Signs the CSR in `spec.request` (base64 PEM) as it asks.
fn sign(csr: &Value, issuer: &Issuer<'_, KeyPair>, lifetime: Duration) -> Result<String, String> {
    let b64 = csr["spec"]["request"]
        .as_str()
        .ok_or("spec.request is missing")?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("spec.request is not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "spec.request is not PEM text")?;
    let mut req = CertificateSigningRequestParams::from_pem(&pem)
        .map_err(|e| format!("spec.request is not a valid CSR: {e}"))?;
    let now = time::OffsetDateTime::now_utc();
    req.params.not_before = now;
    req.params.not_after = now + lifetime;
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f; // a positive INTEGER
    req.params.serial_number = Some(SerialNumber::from_slice(&serial));
    req.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    req.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    req.signed_by(issuer)
        .map(|c| c.pem())
        .map_err(|e| format!("signing: {e}"))
}
