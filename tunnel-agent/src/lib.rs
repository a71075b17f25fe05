//! The edge end of the tunnel.
//!
//! [`servers`] runs one [`connector`] per server address, each keeping one
//! registered connection to its server; for each
//! stream the server opens, [`edge`] checks the [`allowlist`] and dials the
//! destination. [`agent`] wires it together from a [`config::AgentConfig`].

pub mod agent;
pub mod allowlist;
pub mod backoff;
pub mod check_config;
pub mod config;
pub mod connector;
pub mod edge;
pub mod enroll;
pub mod hub_interface;
pub mod key_pair;
pub mod link;
pub mod metrics;
pub mod node_setup;
pub mod proxy;
pub mod renew;
pub mod servers;
pub mod tls_files;
pub mod tunnel_dialer;
