//! `FakeApiserver`: the listener, TLS, connection handling and the state API tests drive
//! while it serves.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::churn::{self, ChurnHandle};
use super::fault::{Fault, FaultSet};
use super::handler;
use super::resource::Res;
use super::store::{object_rv, Store, DEFAULT_HISTORY};
use super::tls::{server_config, ServerTls};

/// Requests kept by [`FakeApiserver::requests`].
const REQUEST_LOG: usize = 10_000;
/// Time a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a [`FakeApiserver`].
#[derive(Clone, Debug)]
pub struct FakeApiserverOptions {
    /// HTTPS when set, plain HTTP otherwise.
    pub tls: Option<ServerTls>,
    /// Listen address (default `127.0.0.1:0`, an ephemeral port).
    pub bind: SocketAddr,
}

impl Default for FakeApiserverOptions {
    fn default() -> Self {
        Self {
            tls: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// One request as the server saw it, for assertions on what a client (or proxy) sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path and query, as sent.
    pub path_and_query: String,
    /// `User-Agent` (the proxy's cache key for components).
    pub user_agent: Option<String>,
    /// `Accept` (the proxy forces JSON for what it caches).
    pub accept: Option<String>,
    /// `Accept-Encoding` (the proxy asks for gzip for what it caches).
    pub accept_encoding: Option<String>,
    /// `Authorization` (bearer tokens must pass through the proxy).
    pub authorization: Option<String>,
    /// `Content-Type` of the request body.
    pub content_type: Option<String>,
    /// Common name of the verified client certificate, if one was presented.
    pub client_cn: Option<String>,
    /// Organizations (O) of that certificate: the groups kube-apiserver would give it.
    pub client_orgs: Vec<String>,
}

/// A request's method, path and the status it was answered with (watches: the status of
/// the stream's start), for assertions such as "no write was refused".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnsweredRequest {
    pub method: String,
    pub path_and_query: String,
    pub status: u16,
}

/// Who sent a request, from its verified client certificate (kube-apiserver's x509
/// authenticator: CN is the user name, each O a group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cn: Option<String>,
    pub orgs: Vec<String>,
}

/// State shared by the connection tasks, watch streams, churners and the test.
pub(super) struct Shared {
    pub store: Mutex<Store>,
    /// Bumped after every store change; watch streams wait on it.
    pub changed: watch::Sender<u64>,
    pub fault: Mutex<FaultSet>,
    pub requests: Mutex<VecDeque<RecordedRequest>>,
    pub answered: Mutex<VecDeque<AnsweredRequest>>,
    /// Set to true when the server is dropped: streams and connections end.
    pub shutdown: watch::Sender<bool>,
    /// Bumped by `end_watches`: every open watch stream ends.
    pub end_watches: watch::Sender<u64>,
    /// Watch streams currently open.
    pub active_watches: AtomicUsize,
    /// Responses sent gzip-compressed.
    pub gzipped: AtomicUsize,
    /// Whether large responses are compressed at all (kube-apiserver's `APIResponseCompression`).
    pub compression: AtomicBool,
    pub server_address: String,
}

/// Locks a mutex, carrying on with the data if a panicking thread poisoned it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Runs `f` on the store, then wakes watch streams.
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, seq) = {
            let mut store = lock(&self.store);
            let result = f(&mut store);
            (result, store.next_seq())
        };
        self.changed.send_replace(seq);
        result
    }

    /// The faults in force.
    pub fn fault(&self) -> FaultSet {
        lock(&self.fault).clone()
    }

    /// Appends to the bounded log of answers.
    pub fn record_answer(&self, answer: AnsweredRequest) {
        let mut log = lock(&self.answered);
        if log.len() >= REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(answer);
    }

    /// Appends to the bounded request log.
    pub fn record(&self, request: RecordedRequest) {
        let mut log = lock(&self.requests);
        if log.len() >= REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(request);
    }
}

/// An in-process kube-apiserver speaking the real JSON API over HTTP/1.1 (plain or TLS):
/// the oracle the node proxy is tested against. Stops serving when dropped. Gaps are listed
/// in the module docs.
pub struct FakeApiserver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    runtime: tokio::runtime::Handle,
    acceptor_task: JoinHandle<()>,
}

impl FakeApiserver {
    /// Binds and starts serving in the current tokio runtime.
    pub async fn start(opts: FakeApiserverOptions) -> anyhow::Result<FakeApiserver> {
        let tls = opts.tls.as_ref().map(server_config).transpose()?;
        let listener = TcpListener::bind(opts.bind).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(Res::defaults(), DEFAULT_HISTORY, seed)),
            changed: watch::Sender::new(0),
            fault: Mutex::new(FaultSet::default()),
            requests: Mutex::new(VecDeque::new()),
            answered: Mutex::new(VecDeque::new()),
            shutdown: watch::Sender::new(false),
            end_watches: watch::Sender::new(0),
            active_watches: AtomicUsize::new(0),
            gzipped: AtomicUsize::new(0),
            compression: AtomicBool::new(true),
            server_address: addr.to_string(),
        });
        tracing::info!(component = "fake-apiserver", %addr, scheme, "serving");
        let acceptor = tls.map(TlsAcceptor::from);
        let acceptor_task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(FakeApiserver {
            shared,
            addr,
            tls: opts.tls.is_some(),
            runtime: tokio::runtime::Handle::current(),
            acceptor_task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>` (or `http://` without TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Creates or replaces an object, filling `resourceVersion` (global counter), `uid` and
    /// `creationTimestamp`; watchers see ADDED or MODIFIED. Returns the new resourceVersion.
    ///
    /// Panics if `obj` has no `metadata.name` (a bug in the calling test).
    pub fn upsert(&self, res: &Res, obj: Value) -> u64 {
        match self.shared.mutate(|s| s.upsert(res, obj)) {
            Ok(stored) => object_rv(&stored),
            Err(e) => panic!("FakeApiserver::upsert of {}: {e}", res.resource),
        }
    }

    /// Deletes an object; watchers see DELETED. Returns the deletion's resourceVersion.
    pub fn delete(&self, res: &Res, namespace: Option<&str>, name: &str) -> Option<u64> {
        self.shared
            .mutate(|s| s.delete(res, namespace, name))
            .map(|gone| object_rv(&gone))
    }

    /// The stored object (with `kind` and `apiVersion`), if any.
    pub fn get(&self, res: &Res, namespace: Option<&str>, name: &str) -> Option<Value> {
        lock(&self.shared.store)
            .get(res, namespace, name)
            .map(|o| (*o).clone())
    }

    /// The stored objects of a type, optionally in one namespace, in key order.
    pub fn list(&self, res: &Res, namespace: Option<&str>) -> Vec<Value> {
        lock(&self.shared.store)
            .list(res, namespace)
            .iter()
            .map(|o| (**o).clone())
            .collect()
    }

    /// The current resourceVersion (what a list would report).
    pub fn current_rv(&self) -> u64 {
        lock(&self.shared.store).current_rv()
    }

    /// Makes a resource type (e.g. another custom resource) known to discovery and routing.
    pub fn register(&self, res: &Res) {
        lock(&self.shared.store).register(res);
    }

    /// Sends a BOOKMARK at the current resourceVersion to watchers of `res` that allow them.
    pub fn emit_bookmark(&self, res: &Res) {
        self.shared.mutate(|s| s.bookmark(res));
    }

    /// Forgets history up to `rv`: watches from an older resourceVersion get a 410 ERROR
    /// event, lists with `resourceVersionMatch=Exact` at an older one a 410 Status.
    pub fn compact(&self, rv: u64) {
        self.shared.mutate(|s| s.compact(rv));
    }

    /// Creates `objects` objects `churn-<i>` in `namespace` and modifies them round-robin at
    /// `events_per_sec` until the handle is dropped, recording every (name, rv) written.
    pub fn spawn_churn(
        &self,
        res: &Res,
        namespace: &str,
        objects: usize,
        events_per_sec: u32,
    ) -> ChurnHandle {
        churn::spawn(
            &self.runtime,
            self.shared.clone(),
            res,
            namespace,
            objects,
            events_per_sec,
        )
    }

    /// Starts a `kubernetes.io/kubelet-serving` signer (see [`super::signer`])
    /// with this CA and certificate lifetime; it stops when the handle is dropped.
    pub fn spawn_signer(
        &self,
        ca_cert_pem: &str,
        ca_key_pem: &str,
        lifetime: Duration,
    ) -> Result<super::signer::SignerHandle, super::signer::SignerError> {
        super::signer::spawn(
            &self.runtime,
            self.shared.clone(),
            ca_cert_pem,
            ca_key_pem,
            lifetime,
        )
    }

    /// Number of watch streams open right now (e.g. to see a proxy's watch arrive or end).
    pub fn active_watches(&self) -> usize {
        self.shared.active_watches.load(Ordering::SeqCst)
    }

    /// Number of responses sent gzip-compressed so far (non-watch, over 128 KiB, to clients
    /// that sent `Accept-Encoding: gzip`).
    pub fn gzipped_responses(&self) -> usize {
        self.shared.gzipped.load(Ordering::SeqCst)
    }

    /// Turns response compression off or on (on by default), as kube-apiserver's
    /// `--feature-gates=APIResponseCompression=false` does.
    pub fn set_compression(&self, on: bool) {
        self.shared.compression.store(on, Ordering::SeqCst);
    }

    /// Ends every open watch stream cleanly (like an apiserver restart); clients re-watch.
    pub fn end_watches(&self) {
        self.shared
            .end_watches
            .send_modify(|generation| *generation += 1);
    }

    /// Replaces the faults in force with this one (`Fault::None` clears them all).
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.shared.fault).replace(fault);
    }

    /// Adds a fault to those in force (the first one matching a path decides its answer).
    pub fn add_fault(&self, fault: Fault) {
        lock(&self.shared.fault).add(fault);
    }

    /// The answers given (the last 10,000), oldest first: method, path and status.
    pub fn answered(&self) -> Vec<AnsweredRequest> {
        lock(&self.shared.answered).iter().cloned().collect()
    }

    /// The last (up to 10,000) requests received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for FakeApiserver {
    fn drop(&mut self) {
        self.acceptor_task.abort();
        self.shared.shutdown.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(component = "fake-apiserver", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_connection(tcp, peer, tls.clone(), shared.clone()));
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    match tls {
        None => serve_http(tcp, ClientIdentity::default(), shared, &mut shutdown).await,
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(component = "fake-apiserver", %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first());
            let identity = ClientIdentity {
                cn: leaf.and_then(|cert| certs::common_name(cert).ok().flatten()),
                orgs: leaf
                    .and_then(|cert| certs::organizations(cert).ok())
                    .unwrap_or_default(),
            };
            serve_http(stream, identity, shared, &mut shutdown).await
        }
    }
}

async fn serve_http<S>(
    io: S,
    identity: ClientIdentity,
    shared: Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let identity = identity.clone();
        async move { Ok::<_, Infallible>(handler::handle(shared, req, identity).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(component = "fake-apiserver", error = %e, "connection ended");
            }
        }
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}
