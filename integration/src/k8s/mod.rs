//! A fake kube-apiserver and a cuttable link relay for the node-proxy tests (issue #5).
//!
//! [`FakeApiserver`] speaks the real apiserver JSON over HTTP/1.1 (plain or TLS): discovery,
//! get/list with label and field selectors, chunked watch streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK, 410 for too-old resourceVersions, create/update/patch/
//! delete with `Status` errors, injected faults and background churn. It shares no code with
//! tunnel-agent: it is the oracle the proxy is checked against. [`LinkRelay`] stands for the
//! WAN link and can be cut into silence, throttled or reset.
//!
//! Typical use (see `integration/tests/fake_apiserver.rs`):
//!
//! ```text
//! let pki = ApiserverPki::generate(dir)?;                  // ca.crt, apiserver.crt (SANs
//!                                                          // 127.0.0.1, localhost, kubernetes.default.svc)
//! let api = FakeApiserver::start(FakeApiserverOptions { tls: Some(pki.server_tls(true)), ..Default::default() }).await?;
//! let link = LinkRelay::start(api.addr()).await?;          // the proxy dials link.addr()
//! api.upsert(&Res::pods(), json!({"metadata": {"name": "p", "namespace": "ns"}}));
//! link.cut(); /* ...offline checks... */ link.restore();
//! ```
//!
//! Semantics worth knowing: one global resourceVersion counter over all types; lists report
//! the current one and return items without `kind`/`apiVersion`; watches with rv unset or
//! "0" start with ADDED for the current state, otherwise replay the last 10,000 events after
//! rv (older: 200 with an ERROR event carrying a 410 `Expired` Status); an object leaving a
//! watch's selectors is sent as DELETED, one entering as ADDED (as the watch cache does).
//!
//! Writing a namespaced object creates its Namespace object if missing (kubectl looks the
//! namespace up after a 404). Request bodies must be JSON: protobuf bodies (kubectl and
//! kubelet send them for built-in types) get 415, which client-go does not retry in JSON.
//!
//! Lists page with `limit`/`continue` in key order (except at resourceVersion "0", served
//! whole as from the watch cache); later pages show current objects, not an etcd snapshot,
//! and a token older than the history gets 410.
//!
//! Responses are gzipped as kube-apiserver does (`gzip.rs`): non-watch resource responses over
//! 128 KiB, only for clients sending `Accept-Encoding: gzip`;
//! [`FakeApiserver::gzipped_responses`] counts them.
//!
//! Pod updates (PUT/PATCH without subresource) are validated as kube-apiserver's
//! `ValidatePodUpdate` does for `spec` ([`pod_update`]): only images, activeDeadlineSeconds,
//! terminationGracePeriodSeconds and added tolerations (or changed tolerationSeconds) may
//! change; anything else is 422 Invalid. Tests bind pods (set `spec.nodeName`) through
//! [`FakeApiserver::upsert`], which is not validated.
//!
//! CertificateSigningRequests (`certificates.k8s.io/v1`, cluster-scoped): create sets
//! `spec.username`/`spec.groups` from the client certificate's CN/O (as the x509
//! authenticator does); the `approval` subresource takes only `status.conditions`, `status`
//! only `status`. No signer runs here (a test starts one).
//!
//! Not implemented: protobuf and Table output (JSON is always
//! returned), JSON patch and server-side apply (415), deletecollection (405), HTTP/2 (ALPN
//! offers only http/1.1), periodic automatic bookmarks (use `emit_bookmark`), waiting for a
//! too-new list resourceVersion (504 at once), status-subresource protection of `status` on
//! a plain PUT, and graceful deletion (DELETE removes at once and returns the object).

mod body;
mod churn;
pub mod client;
mod discovery;
mod fault;
mod filter;
mod gzip;
mod handler;
mod meta;
mod paging;
pub mod pod_update;
mod relay;
mod resource;
mod route;
pub mod selector;
mod server;
pub mod signer;
mod status;
mod store;
mod tls;
mod watch;

pub use churn::{ChurnEvent, ChurnHandle};
pub use client::{ApiClient, ApiResponse, ClientError, WatchEvents};
pub use fault::Fault;
pub use gzip::DEFAULT_GZIP_THRESHOLD_BYTES;
pub use relay::LinkRelay;
pub use resource::Res;
pub use server::{
    AnsweredRequest, ClientIdentity, FakeApiserver, FakeApiserverOptions, RecordedRequest,
};
pub use status::ApiError;
pub use tls::{ApiserverPki, ServerTls, TlsSetupError};
