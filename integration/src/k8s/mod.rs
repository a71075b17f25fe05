//! A fake kube-apiserver and a cuttable link relay for the node-proxy tests (issue #5).
//!
//! [`FakeApiserver`] speaks the real apiserver JSON over HTTP/1.1 (plain or TLS): discovery,
//! get/list with label and field selectors, chunked watch streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK, 410 for too-old resourceVersions, create/update/patch/
//! delete with `Status` errors, injected faults and background churn. It shares no code with
//! tunnel-agent: it is the oracle the proxy is checked against. [`LinkRelay`] stands for the
//! WAN link and can be cut into silence.

mod body;
mod churn;
pub mod client;
mod discovery;
mod fault;
mod filter;
mod handler;
mod meta;
mod relay;
mod resource;
mod route;
pub mod selector;
mod server;
mod status;
mod store;
mod tls;
mod watch;

pub use churn::{ChurnEvent, ChurnHandle};
pub use client::{ApiClient, ApiResponse, ClientError, WatchEvents};
pub use fault::Fault;
pub use relay::LinkRelay;
pub use resource::Res;
pub use server::{FakeApiserver, FakeApiserverOptions, RecordedRequest};
pub use status::ApiError;
pub use tls::{ApiserverPki, ServerTls, TlsSetupError};
