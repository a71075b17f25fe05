//! Watch streams: 200 chunked `application/json`, one event per line, replayed from the
//! history and then live, closed at `timeoutSeconds`; 410 as an ERROR event.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::body::ApiBody;
use super::filter::{event_line, ObjectFilter};
use super::handler::with_type;
use super::resource::Res;
use super::route::Query;
use super::server::{lock, Shared};
use super::status::ApiError;
use super::store::{object_rv, parse_rv, EventType, HistoryEntry, WatchStart};

/// Events buffered per watch before the stream waits for the client.
const STREAM_BUFFER: usize = 64;
/// History entries read per lock.
const READ_BATCH: usize = 256;
/// Timeout when the client gives none or 0 (kube-apiserver picks 30-60 min at random).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Starts a watch of `res` selected by `filter`, answering 200 with a streaming body.
pub fn start(
    shared: Arc<Shared>,
    res: &Res,
    filter: ObjectFilter,
    query: &Query,
) -> Result<Response<ApiBody>, ApiError> {
    let mut from_rv = parse_rv(query.resource_version.as_deref())?;
    if query.send_initial_events {
        if !query.allow_watch_bookmarks {
            return Err(ApiError::BadRequest(
                "sendInitialEvents requires allowWatchBookmarks=true".into(),
            ));
        }
        // Watch-list: the current state first, whatever resourceVersion (NotOlderThan).
        from_rv = None;
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let response = with_type(StatusCode::OK, ApiBody::Stream(rx), "application/json");
    let start = lock(&shared.store).watch_start(res, filter.namespace.as_deref(), from_rv);
    let start = match start {
        Ok(start) => start,
        Err(expired) => {
            let line = event_line("ERROR", &expired.to_status());
            // The channel has room: this is its first message.
            let _ = tx.try_send(Bytes::from(line));
            return Ok(response);
        }
    };
    let timeout = if shared.fault().watch_never_ends() {
        None
    } else {
        Some(
            query
                .timeout_seconds
                .filter(|secs| *secs > 0)
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        )
    };
    let stream = WatchStream {
        shared: shared.clone(),
        kind: res.kind.clone(),
        api_version: res.api_version(),
        storage: res.storage_key(),
        filter,
        bookmarks: query.allow_watch_bookmarks,
        initial_events_end: query.send_initial_events,
        tx,
    };
    let open = OpenWatch::count(shared.clone());
    tokio::spawn(async move {
        let _open = open;
        let mut ended = shared.end_watches.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        let limit = async {
            match timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stream.run(start) => {}
            _ = limit => {}
            _ = ended.changed() => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    Ok(response)
}

/// Counts an open watch stream in [`Shared::active_watches`] for as long as it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn count(shared: Arc<Shared>) -> Self {
        shared.active_watches.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.active_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open watch: reads the history from its cursor and sends what its filter selects.
struct WatchStream {
    shared: Arc<Shared>,
    kind: String,
    api_version: String,
    storage: String,
    filter: ObjectFilter,
    bookmarks: bool,
    /// Send the `k8s.io/initial-events-end` BOOKMARK after the initial ADDED events.
    initial_events_end: bool,
    tx: mpsc::Sender<Bytes>,
}

impl WatchStream {
    /// Streams until the client leaves or history is lost under it.
    async fn run(self, start: WatchStart) {
        let mut changed = self.shared.changed.subscribe();
        for obj in start.initial.iter().filter(|o| self.filter.matches(o)) {
            if !self.send(EventType::Added.as_str(), obj).await {
                return;
            }
        }
        if self.initial_events_end {
            let end = json!({
                "kind": self.kind,
                "apiVersion": self.api_version,
                "metadata": {
                    "resourceVersion": start.min_rv.to_string(),
                    "creationTimestamp": null,
                    "annotations": { "k8s.io/initial-events-end": "true" },
                },
            });
            if !self.send(EventType::Bookmark.as_str(), &end).await {
                return;
            }
        }
        let mut cursor = start.cursor;
        loop {
            changed.borrow_and_update();
            let read = lock(&self.shared.store).read_from(&self.storage, cursor, READ_BATCH);
            let Ok((entries, next)) = read else {
                // Events this watcher had not seen were evicted: end the stream so the
                // client re-watches (and gets 410 if it is too far behind).
                tracing::debug!(component = "fake-apiserver", storage = %self.storage, "watcher fell behind");
                return;
            };
            if !self.send_entries(&entries, start.min_rv).await {
                return;
            }
            if next != cursor {
                cursor = next;
                continue;
            }
            tokio::select! {
                result = changed.changed() => if result.is_err() { return },
                _ = self.tx.closed() => return,
            }
        }
    }

    async fn send_entries(&self, entries: &[HistoryEntry], min_rv: u64) -> bool {
        for entry in entries
            .iter()
            .filter(|e| e.rv > min_rv || e.kind == EventType::Bookmark)
        {
            if let Some((kind, obj)) = self.filter.translate(entry, self.bookmarks) {
                if kind == EventType::Bookmark && object_rv(&obj) < min_rv {
                    continue;
                }
                if !self.send(kind.as_str(), &obj).await {
                    return false;
                }
            }
        }
        true
    }

    async fn send(&self, kind: &str, obj: &serde_json::Value) -> bool {
        self.tx
            .send(Bytes::from(event_line(kind, obj)))
            .await
            .is_ok()
    }
}
