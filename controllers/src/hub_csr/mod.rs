//! The hub CSR approver: approves the kubelet-serving CSRs agents make for their HTTPS
//! node-proxy listener ([`review::review`] says exactly which), leaves every other CSR of
//! that signer alone. One watch of CSRs (`spec.signerName=kubernetes.io/kubelet-serving`);
//! approval through the `approval` subresource.

pub mod review;

use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::metrics::ControllerMetrics;
use review::{review, Decision, SIGNER};

/// The reason of the Approved condition the approver writes.
pub const APPROVAL_REASON: &str = "EdgeTunnelHubServing";

/// Why the approver stopped (the supervisor restarts it).
#[derive(Debug, thiserror::Error)]
pub enum ApproverError {
    #[error("the CSR watch ended")]
    WatchEnded,
}

/// Watches kubelet-serving CSRs and approves the hub's.
pub async fn run(
    client: Client,
    allowed_ips: Vec<IpAddr>,
    metrics: ControllerMetrics,
) -> Result<(), ApproverError> {
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.signerName={SIGNER}"));
    let mut events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    tracing::info!(controller = "hub-csr", allowed_ips = ?allowed_ips, "watching {SIGNER} CSRs");
    loop {
        let csr = match events.try_next().await {
            Ok(Some(Event::Apply(csr) | Event::InitApply(csr))) => csr,
            Ok(Some(_)) => continue,
            Ok(None) => return Err(ApproverError::WatchEnded),
            Err(e) => {
                tracing::warn!(controller = "hub-csr", error = %e, "CSR watch failed; retrying");
                continue;
            }
        };
        let name = csr.name_any();
        let count = |d: &str| metrics.hub_csr_reviews.with_label_values(&[d]).inc();
        match review(&csr, &allowed_ips) {
            Decision::Decided => {}
            Decision::Ignore(reason) => {
                count("ignored");
                tracing::debug!(controller = "hub-csr", csr = %name, %reason, "not a hub serving CSR; left alone");
            }
            Decision::Approve { node } => match approve(&api, &csr).await {
                Ok(()) => {
                    count("approved");
                    tracing::info!(controller = "hub-csr", %node, csr = %name, "hub serving CSR approved");
                }
                Err(e) => {
                    // The next event for it (or the watch's next re-list) tries again.
                    count("approve_failed");
                    tracing::warn!(controller = "hub-csr", %node, csr = %name, error = %e, "approving failed");
                }
            },
        }
    }
}

/// Adds the Approved condition through the approval subresource.
async fn approve(
    api: &Api<CertificateSigningRequest>,
    csr: &CertificateSigningRequest,
) -> Result<(), kube::Error> {
    let mut conditions = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(k8s_openapi::chrono::Utc::now());
    conditions.push(CertificateSigningRequestCondition {
        type_: "Approved".into(),
        status: "True".into(),
        reason: Some(APPROVAL_REASON.into()),
        message: Some(
            "tunnel-server: node identity, IP SANs and usages of a hub serving certificate".into(),
        ),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
    let patch = json!({
        "metadata": { "resourceVersion": csr.resource_version() },
        "status": { "conditions": conditions },
    });
    api.patch_approval(
        &csr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map(drop)
}
