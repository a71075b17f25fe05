//! The autonomy cache: what the node proxy stores from upstream responses and how it
//! answers while the cloud is unreachable.
//!
//! Sans-IO decisions ([`RequestInfo`], [`ComponentRule`], selectors, [`WatchDecoder`],
//! offline answers) sit beside a redb store written by one group-commit writer thread.
//!
//! Objects are kept per component in *sets*: one per list/watch scope (namespace plus
//! canonical label and field selectors), replaced as a whole by a full list and kept
//! current by the watch with the same scope, and one for get/create/update/patch
//! responses. An offline list is answered from the set with the same scope, else from
//! the union of the sets covering its namespace, filtered by its selectors; a get from
//! the newest copy in any set.

mod apply;
mod component;
mod error;
mod field_selector;
pub mod json_patch;
mod keys;
mod label_selector;
mod object;
mod offline;
mod offline_write;
mod path;
mod permissions;
mod recover;
mod request;
mod status;
mod store;
pub mod strategic_merge;
mod watch_decoder;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use apply::WriteOp;
use keys::{ResourceKey, DIRECT_OWNER};
use store::Store;
use writer::{Job, WriterConfig};

pub use component::ComponentRule;
pub use error::{CacheError, ComponentRuleError, RequestError, SelectorError, WatchDecodeError};
pub use field_selector::FieldSelector;
pub use label_selector::LabelSelector;
pub use recover::{CacheReset, ResetReason};
pub use request::{RequestInfo, RequestKind, Verb};
pub use status::status_json;
pub use watch_decoder::WatchDecoder;

/// The decoders of what the cache reads from the apiserver and from disk,
/// for the `fuzz/` targets only (feature `fuzzing`; not a stable API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use bytes::Bytes;

    use crate::object::{self, StoredObject, WatchEvent};
    use crate::CacheError;

    /// An object's identity as the cache keys it, and the JSON it stores.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Identity {
        pub namespace: String,
        pub name: String,
        pub resource_version: Option<String>,
        pub json: Bytes,
    }

    fn identity(o: StoredObject) -> Identity {
        Identity {
            namespace: o.namespace,
            name: o.name,
            resource_version: o.resource_version,
            json: o.json,
        }
    }

    /// A get/create/update/patch response body.
    pub fn parse_object(json: &[u8]) -> Result<Identity, CacheError> {
        object::parse_object(Bytes::copy_from_slice(json)).map(identity)
    }

    /// A list response body: its items as stored (with `kind`/`apiVersion`
    /// added where a typed list leaves them out).
    pub fn parse_list(json: &[u8], later_page: bool) -> Result<Vec<Identity>, CacheError> {
        object::parse_list(json, later_page).map(|l| l.items.into_iter().map(identity).collect())
    }

    /// One watch event line: its type and, except for bookmarks, the object.
    pub fn parse_event(line: &[u8]) -> Result<(&'static str, Option<Identity>), CacheError> {
        Ok(match object::parse_event(line)? {
            WatchEvent::Upsert(o) => ("upsert", Some(identity(o))),
            WatchEvent::Deleted(o) => ("deleted", Some(identity(o))),
            WatchEvent::Bookmark(_) => ("bookmark", None),
            WatchEvent::Ignored => ("ignored", None),
        })
    }

    /// A value as read back from the store: resourceVersion and JSON.
    pub fn decode_stored_value(value: &[u8]) -> (Option<&str>, &[u8]) {
        crate::store::decode_value(value)
    }

    /// What the store writes for `rv` and `json`.
    pub fn encode_stored_value(rv: Option<&str>, json: &[u8]) -> Vec<u8> {
        crate::store::encode_value(rv, json)
    }
}

/// Where and how the cache stores: from `--cache-dir` and `--cache-max-bytes`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Directory holding the database file (created if missing).
    pub dir: PathBuf,
    /// Quota of accounted bytes (keys plus values); new entries beyond it are refused.
    pub max_bytes: u64,
    /// Components not seen for this long have their entries deleted.
    pub gc_after: Duration,
    /// Longest time a write waits for others to share its transaction and fsync.
    pub commit_interval: Duration,
}

/// What to answer a request while offline (or when upstream failed a get/list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfflineAnswer {
    /// Answer with this status and `application/json` body.
    Respond { status: u16, body: Bytes },
    /// A watch: answer 200, send nothing, hold until the client's timeout or reconnect.
    HoldWatch,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Accounted bytes (keys plus values) currently stored.
    pub bytes_used: u64,
    /// Stored objects, discovery documents and list records.
    pub objects: u64,
    /// Writes refused for the quota or a full disk since open.
    pub refused_writes: u64,
    /// Durable transactions committed since open (each holds a batch of writes).
    pub commits: u64,
    /// Files moved aside and replaced since start, per [`ResetReason::ALL`].
    pub resets: [u64; 4],
}

/// Whether the cache works, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheHealth {
    /// Opened as it was.
    Ok,
    /// Working, but the newest of its resets lost what was stored.
    Reset(CacheReset),
    /// No cache at all: requests are only proxied.
    Disabled(String),
}

impl std::fmt::Display for CacheHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheHealth::Ok => write!(f, "ok"),
            CacheHealth::Reset(reset) => write!(f, "degraded ({reset})"),
            CacheHealth::Disabled(why) => write!(f, "disabled, proxy only ({why})"),
        }
    }
}

/// The crash-safe per-component cache; cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct AutonomyCache {
    shared: Arc<Shared>,
}

/// Owned by all clones; dropping the last one stops the writer and closes the database.
struct Shared {
    /// `None` for a disabled cache (see [`AutonomyCache::disabled`]).
    store: Option<Arc<Store>>,
    /// Why the cache is disabled.
    disabled: Option<String>,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            // The writer finishes its current batch and exits; then the file is closed.
            let _ = writer.join();
        }
    }
}

impl AutonomyCache {
    /// Opens (or creates) the cache in `cfg.dir`, drops components idle for
    /// `cfg.gc_after` and starts the writer thread; fast, no rebuild. A file that
    /// cannot be opened is moved aside and replaced (see [`AutonomyCache::health`]);
    /// fails only when not even a fresh file can be used.
    pub fn open(cfg: CacheConfig) -> Result<AutonomyCache, CacheError> {
        let (store, _reset) = Store::open(&cfg.dir)?;
        let store = Arc::new(store);
        let writer_cfg = WriterConfig {
            max_bytes: cfg.max_bytes,
            gc_after: cfg.gc_after,
            commit_interval: cfg.commit_interval,
        };
        writer::contained(&store, "GC at open", || {
            writer::maintain(&store, &writer_cfg, true)
        });
        let (queue, jobs) = mpsc::channel(writer::QUEUE_DEPTH);
        let writer_store = store.clone();
        let writer = std::thread::Builder::new()
            .name("cache-writer".into())
            .spawn(move || writer::run(writer_store, writer_cfg, jobs))
            .map_err(|e| CacheError::Open {
                path: cfg.dir.clone(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(AutonomyCache {
            shared: Arc::new(Shared {
                store: Some(store),
                disabled: None,
                queue: Some(queue),
                writer: Some(writer),
            }),
        })
    }

    /// A cache that stores nothing and answers offline requests with 503: the hub
    /// keeps proxying when no cache can be opened at all.
    pub fn disabled(reason: String) -> AutonomyCache {
        AutonomyCache {
            shared: Arc::new(Shared {
                store: None,
                disabled: Some(reason),
                queue: None,
                writer: None,
            }),
        }
    }

    /// Whether the cache works, and what happened to it if not quite.
    pub fn health(&self) -> CacheHealth {
        match (&self.shared.store, &self.shared.disabled) {
            (None, reason) => CacheHealth::Disabled(reason.clone().unwrap_or_default()),
            (Some(store), _) => match store.last_reset() {
                Some(reset) => CacheHealth::Reset(reset),
                None => CacheHealth::Ok,
            },
        }
    }

    /// Records a 2xx JSON response to a cacheable get/list/create/update/patch or
    /// non-resource GET; resolves once durable on disk (group commit).
    pub async fn record_response(
        &self,
        component: &str,
        req: &RequestInfo,
        body: Bytes,
    ) -> Result<(), CacheError> {
        if !req.cacheable() {
            return Err(CacheError::NotCacheable {
                reason: "not a cacheable request",
            });
        }
        let Some(key) = ResourceKey::of(component, req) else {
            serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
                CacheError::BadJson {
                    what: "document",
                    reason: e.to_string(),
                }
            })?;
            let op = WriteOp::Doc {
                component: component.to_string(),
                path: req.path.clone(),
                body,
            };
            return self.submit(op).await;
        };
        let op = match req.verb {
            Verb::List => WriteOp::ReplaceList {
                list: object::parse_list(&body, req.continue_token.is_some())?,
                collection: key.collection,
                owner: key.list_owner,
            },
            Verb::Get | Verb::Create | Verb::Update | Verb::Patch => WriteOp::Upsert {
                object: object::parse_object(body)?,
                collection: key.collection,
                owner: DIRECT_OWNER.to_string(),
            },
            _ => {
                return Err(CacheError::NotCacheable {
                    reason: "watch responses are recorded event by event",
                })
            }
        };
        self.submit(op).await
    }

    /// Records one watch event line exactly as upstream sent it; resolves once durable.
    pub async fn record_watch_event(
        &self,
        component: &str,
        req: &RequestInfo,
        event: Bytes,
    ) -> Result<(), CacheError> {
        let key =
            ResourceKey::of(component, req).filter(|_| req.verb == Verb::Watch && req.cacheable());
        let Some(key) = key else {
            return Err(CacheError::NotCacheable {
                reason: "not a cacheable watch request",
            });
        };
        let event = object::parse_event(&event)?;
        if matches!(event, object::WatchEvent::Ignored) {
            return Ok(());
        }
        let op = WriteOp::Event {
            collection: key.collection,
            owner: key.list_owner,
            event,
        };
        self.submit(op).await
    }

    async fn submit(&self, op: WriteOp) -> Result<(), CacheError> {
        let queue = self.shared.queue.as_ref().ok_or(CacheError::Closed)?;
        let (done, outcome) = oneshot::channel();
        let job = Job {
            op,
            done: Some(done),
        };
        queue.send(job).await.map_err(|_| CacheError::Closed)?;
        outcome.await.map_err(|_| CacheError::Closed)?
    }

    /// What to answer while offline (or while online when upstream failed a get/list).
    /// An acknowledged write (lease, node or pod status) is stored best effort, after
    /// this returns: use [`AutonomyCache::offline_answer_durable`] for writes.
    pub fn offline_answer(
        &self,
        component: &str,
        req: &RequestInfo,
        request_body: &[u8],
    ) -> OfflineAnswer {
        let (answer, write) = self.decide_offline(component, req, request_body);
        if let (Some(op), Some(queue)) = (write, self.shared.queue.as_ref()) {
            // Best effort: the acknowledged object is kept current when there is room.
            let _ = queue.try_send(Job { op, done: None });
        }
        answer
    }

    /// Like [`AutonomyCache::offline_answer`], but an acknowledged write is answered
    /// only once its result is durable: the next write to the same object (kubelet
    /// sends them one after the other) applies to it, and a restarted kubelet reads it
    /// back. A result that cannot be stored (quota, disk) is a 503.
    pub async fn offline_answer_durable(
        &self,
        component: &str,
        req: &RequestInfo,
        request_body: &[u8],
    ) -> OfflineAnswer {
        let (answer, write) = self.decide_offline(component, req, request_body);
        let Some(op) = write else {
            return answer;
        };
        match self.submit(op).await {
            Ok(()) => answer,
            Err(err) => {
                let message =
                    format!("offline mode: the acknowledged write cannot be stored: {err}");
                OfflineAnswer::Respond {
                    status: 503,
                    body: status_json(503, "ServiceUnavailable", &message),
                }
            }
        }
    }

    fn decide_offline(
        &self,
        component: &str,
        req: &RequestInfo,
        request_body: &[u8],
    ) -> (OfflineAnswer, Option<WriteOp>) {
        let Some(store) = &self.shared.store else {
            let why = self.shared.disabled.as_deref().unwrap_or_default();
            let message = format!("offline and the autonomy cache is disabled: {why}");
            let answer = OfflineAnswer::Respond {
                status: 503,
                body: status_json(503, "ServiceUnavailable", &message),
            };
            return (answer, None);
        };
        store
            .asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(component.to_string(), writer::unix_now());
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            offline::answer(store, component, req, request_body)
        }));
        match answered {
            Ok(answered) => answered,
            Err(payload) => {
                let message = recover::panic_message(payload.as_ref());
                store.reset(
                    ResetReason::Panic,
                    format!("redb panicked reading: {message}"),
                );
                let message = "the autonomy cache was damaged and has been reset";
                let body = status_json(503, "ServiceUnavailable", message);
                (OfflineAnswer::Respond { status: 503, body }, None)
            }
        }
    }

    /// The newest stored copy of one object `component` was given (by a get,
    /// list or watch), as upstream sent it; `namespace` is empty for
    /// cluster-scoped objects and `group` for the core group. `Ok(None)` when
    /// absent or when the cache is disabled. The node proxy's response filters
    /// read their context (this node, a Service's labels) here.
    pub fn stored_object(
        &self,
        component: &str,
        gvr: (&str, &str, &str),
        namespace: &str,
        name: &str,
    ) -> Result<Option<Bytes>, CacheError> {
        let Some(store) = &self.shared.store else {
            return Ok(None);
        };
        let (group, version, resource) = gvr;
        let collection = keys::Collection {
            component: component.to_string(),
            gvr: format!("{group}/{version}/{resource}"),
        };
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.object(&collection, namespace, name)
        }));
        match found {
            Ok(found) => Ok(found?.map(|f| f.json)),
            Err(payload) => {
                let message = recover::panic_message(payload.as_ref());
                store.reset(
                    ResetReason::Panic,
                    format!("redb panicked reading: {message}"),
                );
                Err(CacheError::Storage(message))
            }
        }
    }

    /// Tests: the writer thread panics at its next commit.
    #[cfg(test)]
    pub(crate) fn inject_writer_panic(&self) {
        if let Some(store) = &self.shared.store {
            store.panic_next_commit.store(true, Ordering::Relaxed);
        }
    }

    /// Bytes used, objects and refused writes, for metrics.
    pub fn stats(&self) -> CacheStats {
        let Some(store) = &self.shared.store else {
            return CacheStats::default();
        };
        CacheStats {
            bytes_used: store.bytes_used.load(Ordering::Relaxed),
            objects: store.entries.load(Ordering::Relaxed),
            refused_writes: store.refused_writes.load(Ordering::Relaxed),
            commits: store.commits.load(Ordering::Relaxed),
            resets: store.reset_counts(),
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "offline_tests.rs"]
mod offline_tests;

#[cfg(test)]
#[path = "enospc_tests.rs"]
mod enospc_tests;

#[cfg(test)]
#[path = "crash_tests.rs"]
mod crash_tests;

#[cfg(test)]
#[path = "reset_tests.rs"]
mod reset_tests;
