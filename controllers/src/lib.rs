//! tunnel-server's Kubernetes controllers: everything that talks to kube-apiserver from the
//! cloud, through kube-rs.
//!
//! - [`autonomy`]: pods bound to nodes annotated `edgetunnel.io/autonomy-duration` get
//!   `node.kubernetes.io/unreachable` and `not-ready` NoExecute tolerations of that duration,
//!   so the node lifecycle controller does not evict them while the node's link is down.
//! - [`hub_csr`]: approves the serving-certificate CSRs of the agents' HTTPS node-proxy
//!   listener (signer `kubernetes.io/kubelet-serving`), exactly those and nothing else.
//!
//! Each controller keeps its decisions in plain functions (unit-tested beside them); the
//! watch and patch loops around them are thin. [`supervise`] runs a controller in a task of
//! its own and restarts it with backoff, so its failure never takes tunnel-server down.

pub mod autonomy;
pub mod client;
pub mod hub_csr;
pub mod metrics;
mod supervise;

pub use client::{client, ClientError};
pub use metrics::ControllerMetrics;
pub use supervise::supervise;
