//! The cloud end of the edge tunnel.
//!
//! Agents dial in ([`agents`]) and are kept in the [`registry`]; front ends
//! ([`frontend`]) turn apiserver requests into dials ([`dial`]) through the
//! right agent; [`forward`] carries fixed cloud ports to edge services; [`services`]
//! serves the streams agents open towards the cloud; [`kube_controllers`] starts the
//! Kubernetes controllers of the `controllers` crate. [`server`] wires it together from a [`config::ServerConfig`].

pub mod admin;
pub mod agents;
pub mod agents_query;
pub mod agents_ws;
pub mod certs_cmd;
pub mod certs_secret;
pub mod check_config;
pub mod config;
pub mod dial;
pub mod enroll;
pub mod forward;
pub mod frontend;
pub mod handshake;
pub mod handshake_gate;
pub mod hosts_file;
pub mod kube_controllers;
pub mod log_limit;
pub mod metrics;
pub mod peers;
pub mod registry;
pub mod reload;
pub mod revocation;
pub mod server;
pub mod services;
