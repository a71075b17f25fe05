//! Test harness: runs the real `tunnel-server` and `tunnel-agent` binaries
//! with generated certificates on loopback, and talks to them like
//! kube-apiserver, kubelet and operators would.
//!
//! The binaries are taken from the same target directory as the test
//! executable, so the test command is `cargo build --bins && cargo test`.

pub mod bench;
pub mod client;
pub mod cluster;
pub mod controllers;
pub mod daemon;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod k8s;
pub mod kubelet;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod process;
pub mod raw_h2;
pub mod replicas;
pub mod scenarios;
pub mod services;
pub mod weaklink;

pub use client::{connect_uds, ConnectReply};
pub use cluster::{Cluster, ClusterOptions};
pub use pki::Pki;
pub use process::{AgentOptions, AgentProc, ServerOptions, ServerProc};
