//! Node-local Kubernetes API proxy ("hub") for kubelet and friends: forwards to
//! the apiserver and answers from the [`autonomy_cache`] while the cloud is unreachable.
//!
//! The embedding process (tunnel-agent) gives [`run::start`] a
//! [`settings::HubConfig`], an [`upstream::UpstreamDialer`] (how bytes reach the
//! apiserver: [`upstream::DirectDialer`] over TCP, or the agent's tunnel) and
//! [`metrics::HubMetrics`] registered in its own Prometheus registry; it reads
//! the hub's state for `/readyz` through [`status::HubStatus`]. Everything
//! else (listener, forwarding, health and prober, recording into the cache)
//! is private to this crate.

mod cert_files;
mod filters;
mod forward;
mod gunzip;
mod health;
pub mod metrics;
mod probe_schedule;
mod prober;
mod record;
mod respond;
pub mod run;
mod server;
mod serving;
pub mod settings;
pub mod status;
pub mod upstream;
mod upstream_tls;
mod watch_pump;

#[cfg(test)]
mod filter_tests;
#[cfg(test)]
mod gunzip_tests;
#[cfg(test)]
mod test_hub;
#[cfg(test)]
mod upgrade_tests;
