//! A kubelet-like workload for `hub-bench --kubelet-wire-seconds`: what one
//! node's kubelet asks of the apiserver, sent through the node proxy, so the
//! bench can count what it costs on the tunnel's wire.
//!
//! Objects come from [`super::kubelet_objects`] (real-cluster sizes).
//!
//! Cadences are kubelet's defaults (see docs/benchmarks.md, "Node proxy
//! bytes per node"): the lease renewed every 10 s (`renewInterval`, a quarter
//! of the 40 s `leaseDuration`); the node status patched every
//! [`Cadence::node_status`] (kubelet computes it every 10 s,
//! `nodeStatusUpdateFrequency`, but with leases reports it only when it
//! changed or every 5 min, `nodeStatusReportFrequency`); a few pod status
//! patches per minute; watches of its pods, its node and services held
//! open, with one BOOKMARK per watch and minute from the apiserver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use hyper::Method;
use serde_json::json;
use tokio::task::JoinSet;

use super::kubelet_objects::{lease, node_status, pod, services, NS};
use crate::hub::enc;
use crate::k8s::{ApiClient, FakeApiserver, Res};

/// How often kubelet sends what.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub lease: Duration,
    pub node_status: Duration,
    pub pod_status: Duration,
    pub bookmark: Duration,
}

impl Default for Cadence {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(10),
            // Between kubelet's 10 s computation and 5 min report: a status
            // change (condition, image list) once a minute, a busy node's pace.
            node_status: Duration::from_secs(60),
            // Three pod status patches a minute (probes flipping, restarts).
            pod_status: Duration::from_secs(20),
            bookmark: Duration::from_secs(60),
        }
    }
}

/// A kubelet of one node talking to `client` (the node proxy).
pub struct Kubelet {
    pub client: ApiClient,
    pub node: String,
    /// Watch events received so far, over all watches.
    pub events: Arc<AtomicU64>,
    watches: JoinSet<()>,
}

/// What kubelet lists at start, then watches from each list's resourceVersion:
/// (collection path, query selecting its share).
fn synced(node_name: &str) -> [(&'static str, String); 3] {
    [
        (
            "/api/v1/pods",
            format!(
                "fieldSelector={}&",
                enc(&format!("spec.nodeName={node_name}"))
            ),
        ),
        (
            "/api/v1/nodes",
            format!(
                "fieldSelector={}&",
                enc(&format!("metadata.name={node_name}"))
            ),
        ),
        ("/api/v1/services", String::new()),
    ]
}

impl Kubelet {
    pub fn new(client: ApiClient, node: &str) -> Self {
        Self {
            client,
            node: node.to_owned(),
            events: Arc::new(AtomicU64::new(0)),
            watches: JoinSet::new(),
        }
    }

    /// Start-up: GET its node, list its pods, its node and services, and
    /// start a watch on each from the list's resourceVersion. Returns the
    /// decoded bytes the lists carried.
    pub async fn initial_sync(&mut self) -> anyhow::Result<u64> {
        let node_path = format!("/api/v1/nodes/{}", self.node);
        let r = self.client.get(&node_path).await?;
        ensure!(r.status == 200, "GET {node_path}: {}", r.status);
        let mut bytes = r.body.len() as u64;
        for (collection, selector) in synced(&self.node) {
            let path = format!("{collection}?{selector}limit=500&resourceVersion=0");
            let r = self.client.get(&path).await?;
            ensure!(r.status == 200, "GET {path}: {}", r.status);
            bytes += r.body.len() as u64;
            let rv = r.json()?["metadata"]["resourceVersion"]
                .as_str()
                .context("list without resourceVersion")?
                .to_owned();
            let watch = format!(
                "{collection}?{selector}watch=1&allowWatchBookmarks=true&timeoutSeconds=600&resourceVersion={rv}"
            );
            let mut w = self.client.watch(&watch).await?;
            ensure!(w.status == 200, "watch {watch}: {}", w.status);
            let events = self.events.clone();
            self.watches.spawn(async move {
                while let Ok(Some(_)) = w.next(Duration::from_secs(3600)).await {
                    events.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(bytes)
    }

    /// Renews the lease (PUT, as kubelet's lease controller does).
    pub async fn renew_lease(&self, n: u64) -> anyhow::Result<()> {
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{}",
            self.node
        );
        let renew = format!(
            "2026-11-30T08:{:02}:{:02}.000000Z",
            (n / 6) % 60,
            (n % 6) * 10
        );
        let body = lease(&self.node, &renew);
        let r = self
            .client
            .request(Method::PUT, &path, Some("application/json"), Some(&body))
            .await?;
        ensure!(r.status == 200, "PUT lease: {}", r.status);
        Ok(())
    }

    /// Patches the node status (strategic merge: new heartbeat times), as kubelet does.
    pub async fn patch_node_status(&self, n: u64) -> anyhow::Result<()> {
        let heartbeat = format!("2026-11-30T09:{:02}:{:02}Z", (n / 60) % 60, n % 60);
        let mut status = node_status(&heartbeat, Vec::new());
        for key in ["capacity", "allocatable", "daemonEndpoints", "nodeInfo"] {
            if let Some(m) = status.as_object_mut() {
                m.remove(key);
            }
        }
        status["$setElementOrder/conditions"] = json!([{"type": "MemoryPressure"},
            {"type": "DiskPressure"}, {"type": "PIDPressure"}, {"type": "Ready"}]);
        let patch = json!({"status": status});
        let path = format!("/api/v1/nodes/{}/status", self.node);
        self.strategic_patch(&path, &patch).await
    }

    /// Patches one pod's status (its Ready condition flips), as kubelet's status manager does.
    pub async fn patch_pod_status(&self, pods: usize, n: u64) -> anyhow::Result<()> {
        let i = (n as usize * 37) % pods.max(1);
        let name = pod(&self.node, i)["metadata"]["name"].clone();
        let name = name.as_str().unwrap_or_default();
        let ready = if n.is_multiple_of(2) { "False" } else { "True" };
        let at = format!("2026-11-30T10:{:02}:{:02}Z", (n / 60) % 60, n % 60);
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "PodReadyToStartContainers"}, {"type": "Initialized"},
                {"type": "Ready"}, {"type": "ContainersReady"}, {"type": "PodScheduled"}],
            "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": at}],
            "containerStatuses": [{"name": "app", "ready": ready == "True", "restartCount": 0, "started": true,
                "image": format!("registry.example.com/team/app-{:02}:v1.4.2", i % 10),
                "imageID": format!("registry.example.com/team/app-{:02}@sha256:{:064x}", i % 10, i),
                "containerID": format!("containerd://{:064x}", i * 7919 + 1),
                "state": {"running": {"startedAt": "2026-11-30T08:00:04Z"}}, "lastState": {}}]}});
        let path = format!("/api/v1/namespaces/{NS}/pods/{name}/status");
        self.strategic_patch(&path, &patch).await
    }

    /// A strategic merge patch, as kubelet sends its status updates.
    async fn strategic_patch(&self, path: &str, patch: &serde_json::Value) -> anyhow::Result<()> {
        let r = self
            .client
            .request(
                Method::PATCH,
                path,
                Some("application/strategic-merge-patch+json"),
                Some(patch),
            )
            .await?;
        ensure!(r.status == 200, "PATCH {path}: {}", r.status);
        Ok(())
    }
}

/// What one steady run sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct SteadyCounts {
    pub leases: u64,
    pub node_status: u64,
    pub pod_status: u64,
    pub bookmarks: u64,
}

/// Runs kubelet's periodic traffic for `window` (bounded): lease renewals,
/// node and pod status patches, and the apiserver's bookmarks on its watches.
pub async fn steady(
    kubelet: &Kubelet,
    api: &FakeApiserver,
    pods: usize,
    cadence: Cadence,
    window: Duration,
) -> anyhow::Result<SteadyCounts> {
    let start = tokio::time::Instant::now();
    let end = start + window;
    let mut counts = SteadyCounts::default();
    let mut due = [start, start, start, start];
    let periods = [
        cadence.lease,
        cadence.node_status,
        cadence.pod_status,
        cadence.bookmark,
    ];
    loop {
        let (which, at) = due
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, t)| *t)
            .unwrap_or((0, end));
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        due[which] = at + periods[which];
        match which {
            0 => {
                kubelet.renew_lease(counts.leases).await?;
                counts.leases += 1;
            }
            1 => {
                kubelet.patch_node_status(counts.node_status).await?;
                counts.node_status += 1;
            }
            2 => {
                kubelet.patch_pod_status(pods, counts.pod_status).await?;
                counts.pod_status += 1;
            }
            _ => {
                for res in [Res::pods(), Res::nodes(), services()] {
                    api.emit_bookmark(&res);
                }
                counts.bookmarks += 3;
            }
        }
    }
    tokio::time::sleep_until(end).await;
    Ok(counts)
}
