//! Node-local Kubernetes API proxy ("hub") for kubelet and friends: forwards to
//! the apiserver and answers from the [`cache`] while the cloud is unreachable.

pub mod cache;
