//! Node-local Kubernetes API proxy ("hub") for kubelet and friends: forwards to
//! the apiserver and answers from the [`autonomy_cache`] while the cloud is unreachable.

pub mod client_cert;
pub mod forward;
pub mod health;
pub mod prober;
pub mod record;
pub mod respond;
pub mod run;
pub mod server;
pub mod settings;
pub mod status;
pub mod upstream;
pub mod upstream_tls;
pub mod watch_pump;

#[cfg(test)]
mod upgrade_tests;
