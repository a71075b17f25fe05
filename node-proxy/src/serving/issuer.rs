//! Obtaining and renewing the serving certificate through the
//! CertificateSigningRequest API, the way kubelet gets its own: a new P-256
//! key, a CSR for `system:node:<node>` / `system:nodes` with the listener's
//! IP as its only SAN, signer `kubernetes.io/kubelet-serving`, sent over the
//! hub's own upstream with the node's certificate. An approver (tunnel-server's
//! `--approve-hub-csrs`, or an operator) approves it, kube-controller-manager
//! signs it with the cluster CA, and the hub polls until
//! `status.certificate` appears.
//!
//! The pair lives in `<cache-dir>/hub-serving/tls.crt|tls.key` (key 0600,
//! written atomically), so a restarted agent serves at once, online or not,
//! and asks for a new certificate only at 70-90 % of the lifetime.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::plan::{self, CsrState, Validity};
use super::ServingCert;
use crate::cert_files::certified_key;
use crate::respond::read_bounded;
use crate::upstream::{Credentials, UpstreamClient};

/// Directory under `--cache-dir` holding `tls.crt` and `tls.key`.
pub const SERVING_DIR: &str = "hub-serving";

/// How often a pending CSR is read again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A CSR without a certificate by then is given up (and a new one made).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Largest CSR response read (an object with a certificate is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// User-Agent of the hub's own requests (not a cached component).
const AGENT: &str = "edgetunnel-hub/serving-cert";

/// What the issuer needs.
pub struct IssuerCtx {
    pub client: Arc<UpstreamClient>,
    /// This node's name (the certificate's `system:node:<name>`).
    pub node: String,
    /// The listener's IP, the certificate's only SAN.
    pub ip: IpAddr,
    /// `<cache-dir>/hub-serving`.
    pub dir: PathBuf,
    pub cert: Arc<ServingCert>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serves what is on disk, renews when due, forever.
pub async fn run_issuer(ctx: IssuerCtx) {
    let jitter: f64 = rand::random();
    let mut failures = 0u32;
    let mut served: Option<Validity> = None;
    loop {
        match load_stored(&ctx) {
            Ok(Some((key, validity))) => {
                if served != Some(validity) {
                    tracing::info!(node = %ctx.node, not_after = validity.not_after,
                        "HTTPS listener: serving certificate loaded from the cache directory");
                    ctx.cert.install(key);
                    served = Some(validity);
                }
                let due = plan::renew_at(validity, jitter) - unix_now();
                if due > 0 {
                    tokio::time::sleep(Duration::from_secs(due as u64)).await;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(node = %ctx.node, dir = %ctx.dir.display(), error = %e,
                    "stored serving certificate unusable; requesting a new one");
            }
        }
        match request_certificate(&ctx).await {
            Ok(name) => {
                failures = 0;
                tracing::info!(node = %ctx.node, csr = %name, "HTTPS listener: new serving certificate issued");
            }
            Err(e) => {
                failures += 1;
                let delay = plan::retry_delay(failures);
                tracing::warn!(node = %ctx.node, csr = e.csr.as_deref().unwrap_or("-"),
                    error = %e.reason, retry_in_s = delay.as_secs(),
                    "serving certificate not obtained; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The stored pair, if any, checked as an issued one is.
fn load_stored(ctx: &IssuerCtx) -> Result<Option<(Arc<CertifiedKey>, Validity)>, String> {
    let (cert, key) = (ctx.dir.join("tls.crt"), ctx.dir.join("tls.key"));
    if !cert.exists() && !key.exists() {
        return Ok(None);
    }
    let chain = certs::load_cert_chain(&cert).map_err(|e| e.to_string())?;
    let key = certs::load_private_key(&key).map_err(|e| e.to_string())?;
    let validity = plan::check_issued(&chain, &key, &ctx.node, ctx.ip, unix_now())?;
    Ok(Some((certified_key(chain, key)?, validity)))
}

/// Why a request failed, and which CSR it was (once created).
struct Failed {
    csr: Option<String>,
    reason: String,
}

impl Failed {
    fn before_csr(reason: impl Into<String>) -> Self {
        Self {
            csr: None,
            reason: reason.into(),
        }
    }
}

/// One CSR from creation to a stored, checked certificate; returns its name.
async fn request_certificate(ctx: &IssuerCtx) -> Result<String, Failed> {
    let id = certs::NodeIdentity::new(&ctx.node, vec![ctx.ip])
        .map_err(|e| Failed::before_csr(e.to_string()))?;
    let request = certs::agent_key_request(&id).map_err(|e| Failed::before_csr(e.to_string()))?;
    let name = plan::csr_name(&ctx.node, rand::random());
    let body = plan::csr_object(&name, &request.csr_pem).to_string();
    let (status, answer) = call(&ctx.client, Method::POST, plan::CSR_PATH, Some(body))
        .await
        .map_err(Failed::before_csr)?;
    if status != 201 && status != 200 {
        return Err(Failed::before_csr(format!(
            "creating CSR {name}: HTTP {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        )));
    }
    tracing::info!(node = %ctx.node, csr = %name, signer = plan::SIGNER, ip = %ctx.ip,
        "serving certificate requested; waiting for approval and signing");
    let failed = |reason: String| Failed {
        csr: Some(name.clone()),
        reason,
    };
    let pem = wait_issued(ctx, &name).await.map_err(failed)?;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(format!("status.certificate is not a PEM chain: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(request.key_pem.as_bytes())
        .map_err(|e| failed(format!("our own key: {e}")))?;
    let validity = plan::check_issued(&chain, &key, &ctx.node, ctx.ip, unix_now())
        .map_err(|e| failed(format!("issued certificate refused: {e}")))?;
    store(&ctx.dir, &pem, &request.key_pem).map_err(failed)?;
    let certified = certified_key(chain, key).map_err(failed)?;
    tracing::debug!(csr = %name, not_after = validity.not_after, "stored the serving certificate");
    ctx.cert.install(certified);
    Ok(name)
}

/// Polls the CSR until it has a certificate, is refused, or times out.
/// Unanswered polls (offline) keep waiting: the CSR is still there.
async fn wait_issued(ctx: &IssuerCtx, name: &str) -> Result<String, String> {
    let started = Instant::now();
    let path = format!("{}/{name}", plan::CSR_PATH);
    loop {
        if started.elapsed() > ISSUE_TIMEOUT {
            return Err(format!(
                "no certificate within {ISSUE_TIMEOUT:?} (not approved? see --approve-hub-csrs)"
            ));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        match call(&ctx.client, Method::GET, &path, None).await {
            Ok((200, body)) => {
                let obj: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| format!("CSR is not JSON: {e}"))?;
                match plan::csr_state(&obj)? {
                    CsrState::Pending => {}
                    CsrState::Issued(pem) => return Ok(pem),
                    CsrState::Refused(why) => return Err(why),
                }
            }
            Ok((404, _)) => return Err("the CSR was deleted before it was issued".into()),
            Ok((status, _)) => {
                tracing::debug!(csr = name, status, "reading the CSR failed; polling on")
            }
            Err(e) => tracing::debug!(csr = name, error = %e, "reading the CSR failed; polling on"),
        }
    }
}

/// Writes key then certificate, each atomically (a crash between the two
/// leaves a pair that fails its check and is requested again).
fn store(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    certs::atomic_file::write_atomic(
        &dir.join("tls.key"),
        key_pem.as_bytes(),
        certs::atomic_file::KEY_MODE,
    )
    .map_err(|e| e.to_string())?;
    certs::atomic_file::write_atomic(
        &dir.join("tls.crt"),
        cert_pem.as_bytes(),
        certs::atomic_file::CERT_MODE,
    )
    .map_err(|e| e.to_string())
}

/// One JSON request upstream with the node's certificate; status and body.
async fn call(
    client: &Arc<UpstreamClient>,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Bytes), String> {
    let body = Full::new(Bytes::from(body.unwrap_or_default()))
        .map_err(|never| match never {})
        .boxed();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, AGENT)
        .body(body)
        .map_err(|e| e.to_string())?;
    let resp = client
        .send(Credentials::NodeCertificate, req, false)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = read_bounded(resp.into_body(), MAX_RESPONSE).await?;
    Ok((status, body))
}
