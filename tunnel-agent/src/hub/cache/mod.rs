//! The autonomy cache: what the node proxy stores from upstream responses and how it
//! answers while the cloud is unreachable.
//!
//! Sans-IO decisions ([`RequestInfo`], [`ComponentRule`], selectors, [`WatchDecoder`],
//! offline answers) sit beside a redb store written by one group-commit writer thread.

mod component;
mod error;
mod field_selector;
mod label_selector;
mod path;
mod request;
mod status;
mod watch_decoder;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

pub use component::ComponentRule;
pub use error::{CacheError, ComponentRuleError, RequestError, SelectorError, WatchDecodeError};
pub use field_selector::FieldSelector;
pub use label_selector::LabelSelector;
pub use request::{RequestInfo, RequestKind, Verb};
pub use status::status_json;
pub use watch_decoder::WatchDecoder;

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
}

/// The crash-safe per-component cache; cheap to clone (Arc inside), Send + Sync.
#[derive(Clone)]
pub struct AutonomyCache {}

impl AutonomyCache {
    /// Opens (or creates) the cache in `cfg.dir`, drops components idle for
    /// `cfg.gc_after` and starts the writer thread; fast, no rebuild.
    pub fn open(cfg: CacheConfig) -> Result<AutonomyCache, CacheError> {
        Err(CacheError::Open {
            path: cfg.dir,
            reason: "not implemented yet".into(),
        })
    }

    /// Records a 2xx JSON response to a cacheable get/list/create/update/patch or
    /// non-resource GET; resolves once durable on disk (group commit).
    pub async fn record_response(
        &self,
        component: &str,
        req: &RequestInfo,
        body: Bytes,
    ) -> Result<(), CacheError> {
        let _ = (component, req, body);
        Err(CacheError::Closed)
    }

    /// Records one watch event line exactly as upstream sent it; resolves once durable.
    pub async fn record_watch_event(
        &self,
        component: &str,
        req: &RequestInfo,
        event: Bytes,
    ) -> Result<(), CacheError> {
        let _ = (component, req, event);
        Err(CacheError::Closed)
    }

    /// What to answer while offline (or while online when upstream failed a get/list).
    pub fn offline_answer(
        &self,
        component: &str,
        req: &RequestInfo,
        request_body: &[u8],
    ) -> OfflineAnswer {
        let _ = (component, req, request_body);
        OfflineAnswer::Respond {
            status: 503,
            body: status_json(503, "ServiceUnavailable", "offline: cache not ready"),
        }
    }

    /// Bytes used, objects and refused writes, for metrics.
    pub fn stats(&self) -> CacheStats {
        CacheStats::default()
    }
}
