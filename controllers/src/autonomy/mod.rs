//! The autonomy controller: pods bound to nodes annotated `edgetunnel.io/autonomy-duration`
//! tolerate the node being unreachable or not ready for that long, so the node lifecycle
//! controller does not evict them during a link outage.
//!
//! Pods get their node at binding, after admission, so this is a watch-and-patch controller,
//! level-triggered: one metadata watch of Nodes, one watch of bound Pods
//! (`spec.nodeName!=`), an [`index::Index`] of what matters, and a deduplicating queue of
//! pods to decide. A worker reads the pod, [`decide::decide`]s and sends a strategic merge
//! patch with the pod's resourceVersion as precondition (on 409: read and decide again).
//! Restarted, the watches' initial lists bring everything back to the wanted state.

pub mod decide;
pub mod duration;
pub mod index;
mod queue;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{metadata_watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::metrics::ControllerMetrics;
use decide::{decide, Relevant, NODE_ANNOTATION, POD_MARKER};
use index::{Index, PodKey};
use queue::Queue;

/// Pods decided and patched at once.
const CONCURRENCY: usize = 16;
/// Reads and patches of one pod before giving up on conflicts for now.
const CONFLICT_ATTEMPTS: usize = 5;

/// The controller's state shared by the watches and the workers.
struct Shared {
    client: Client,
    index: Mutex<Index>,
    queue: Queue,
    metrics: ControllerMetrics,
}

impl Shared {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the controller stopped (the supervisor restarts it).
#[derive(Debug, thiserror::Error)]
pub enum AutonomyError {
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Runs the controller until a watch ends (kube's watcher retries errors itself, with backoff).
pub async fn run(client: Client, metrics: ControllerMetrics) -> Result<(), AutonomyError> {
    let (queue, work) = Queue::new();
    let shared = Arc::new(Shared {
        client,
        index: Mutex::new(Index::default()),
        queue,
        metrics,
    });
    tracing::info!(
        controller = "autonomy",
        "watching nodes and bound pods (annotation {NODE_ANNOTATION})"
    );
    let workers = {
        let shared = shared.clone();
        work.for_each_concurrent(CONCURRENCY, move |key| {
            let shared = shared.clone();
            async move { reconcile(&shared, key).await }
        })
    };
    tokio::select! {
        () = workers => Err(AutonomyError::WatchEnded("work queue")),
        r = watch_nodes(shared.clone()) => r,
        r = watch_pods(shared.clone()) => r,
    }
}

async fn watch_nodes(shared: Arc<Shared>) -> Result<(), AutonomyError> {
    let api: Api<Node> = Api::all(shared.client.clone());
    let mut events = metadata_watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relisted: HashSet<String> = HashSet::new();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(AutonomyError::WatchEnded("node")),
            Err(e) => {
                tracing::warn!(controller = "autonomy", error = %e, "node watch failed; retrying");
                continue;
            }
        };
        let wake = {
            let mut index = shared.index();
            let wake = match event {
                Event::Init => {
                    relisted.clear();
                    Vec::new()
                }
                Event::InitApply(node) | Event::Apply(node) => {
                    let name = node.name_any();
                    relisted.insert(name.clone());
                    let value = node.annotations().get(NODE_ANNOTATION).cloned();
                    index.apply_node(&name, value)
                }
                Event::Delete(node) => {
                    index.delete_node(&node.name_any());
                    Vec::new()
                }
                Event::InitDone => {
                    index.retain_nodes(&relisted);
                    Vec::new()
                }
            };
            shared
                .metrics
                .autonomy_nodes
                .set(index.annotated_nodes() as i64);
            wake
        };
        for key in wake {
            shared.queue.push(key);
        }
    }
}

async fn watch_pods(shared: Arc<Shared>) -> Result<(), AutonomyError> {
    let api: Api<Pod> = Api::all(shared.client.clone());
    // Unbound pods are of no interest until binding sets their node.
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut relisted: HashSet<PodKey> = HashSet::new();
    loop {
        let event = match events.try_next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(AutonomyError::WatchEnded("pod")),
            Err(e) => {
                tracing::warn!(controller = "autonomy", error = %e, "pod watch failed; retrying");
                continue;
            }
        };
        let wake = match event {
            Event::Init => {
                relisted.clear();
                None
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                let key = pod_key(&pod);
                relisted.insert(key.clone());
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                match node {
                    Some(node) if pod.metadata.deletion_timestamp.is_none() => {
                        let tolerations = tolerations(&pod);
                        let marker = pod.annotations().get(POD_MARKER).cloned();
                        let needs = shared.index().apply_pod(
                            key.clone(),
                            node,
                            Relevant::of(&tolerations),
                            marker,
                        );
                        needs.then_some(key)
                    }
                    _ => {
                        shared.index().delete_pod(&key);
                        None
                    }
                }
            }
            Event::Delete(pod) => {
                shared.index().delete_pod(&pod_key(&pod));
                None
            }
            Event::InitDone => {
                let mut index = shared.index();
                index.retain_pods(&relisted);
                tracing::info!(
                    controller = "autonomy",
                    pods = index.pod_count(),
                    "bound pods listed"
                );
                None
            }
        };
        if let Some(key) = wake {
            shared.queue.push(key);
        }
    }
}

fn pod_key(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

fn tolerations(pod: &Pod) -> Vec<k8s_openapi::api::core::v1::Toleration> {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default()
}

/// How one pod's reconciliation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Patched,
    UpToDate,
    /// Its node is not known yet (it is decided when the node is seen) or the pod is gone.
    Skipped,
    /// Conflicts every time, or another error: retried later.
    Retry,
}

/// Reads the pod, decides and patches; requeues it with backoff when that failed.
async fn reconcile(shared: &Shared, key: PodKey) {
    let outcome = reconcile_once(shared, &key).await;
    match outcome {
        Outcome::Retry => {
            let delay = shared.queue.failed(&key);
            shared.queue.push_after(key, delay);
        }
        _ => shared.queue.forget(&key),
    }
}

async fn reconcile_once(shared: &Shared, key: &PodKey) -> Outcome {
    let (ns, name) = key;
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), ns);
    let count = |result: &str| {
        shared
            .metrics
            .autonomy_pod_patches
            .with_label_values(&[result])
            .inc()
    };
    for _ in 0..CONFLICT_ATTEMPTS {
        let pod = match api.get_opt(name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return Outcome::Skipped,
            Err(e) => {
                tracing::warn!(controller = "autonomy", namespace = %ns, pod = %name, error = %e, "reading the pod failed");
                count("error");
                return Outcome::Retry;
            }
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Outcome::Skipped;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Outcome::Skipped;
        }
        let Some(state) = shared.index().node_state(&node) else {
            return Outcome::Skipped;
        };
        let marker = pod.annotations().get(POD_MARKER).cloned();
        let Some(change) = decide(&tolerations(&pod), marker.as_deref(), &state) else {
            return Outcome::UpToDate;
        };
        let rv = pod.resource_version().unwrap_or_default();
        let patch = Patch::Strategic(change.to_patch(&rv));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                count("patched");
                let seconds = change
                    .tolerations
                    .iter()
                    .find(|t| t.key.as_deref() == Some(decide::UNREACHABLE))
                    .and_then(|t| t.toleration_seconds);
                tracing::info!(controller = "autonomy", %node, namespace = %ns, pod = %name,
                    toleration_seconds = ?seconds, marker = ?change.marker, "tolerations patched");
                return Outcome::Patched;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                count("conflict");
                tracing::debug!(controller = "autonomy", %node, namespace = %ns, pod = %name, "conflict; reading again");
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {
                count("not_found");
                return Outcome::Skipped;
            }
            Err(e) => {
                count("error");
                tracing::warn!(controller = "autonomy", %node, namespace = %ns, pod = %name, error = %e, "patching tolerations failed; retrying later");
                return Outcome::Retry;
            }
        }
    }
    Outcome::Retry
}

/// Time the first retry of a failed pod waits; doubled per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest wait before a failed pod is tried again.
const MAX_RETRY: Duration = Duration::from_secs(30);
