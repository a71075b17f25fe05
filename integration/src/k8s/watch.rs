//! Watch streams: 200 chunked `application/json`, one event per line, replayed from the
//! history and then live, closed at `timeoutSeconds`; 410 as an ERROR event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Response, StatusCode};
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
/// Timeout when the client gives none (kube-apiserver picks 30-60 min at random).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Starts a watch of `res` selected by `filter`, answering 200 with a streaming body.
pub fn start(
    shared: Arc<Shared>,
    res: &Res,
    filter: ObjectFilter,
    query: &Query,
) -> Result<Response<ApiBody>, ApiError> {
    let from_rv = parse_rv(query.resource_version.as_deref())?;
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
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        )
    };
    let stream = WatchStream {
        shared,
        storage: res.storage_key(),
        filter,
        bookmarks: query.allow_watch_bookmarks,
        tx,
    };
    tokio::spawn(async move {
        let run = stream.run(start);
        match timeout {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, run).await;
            }
            None => run.await,
        }
    });
    Ok(response)
}

/// One open watch: reads the history from its cursor and sends what its filter selects.
struct WatchStream {
    shared: Arc<Shared>,
    storage: String,
    filter: ObjectFilter,
    bookmarks: bool,
    tx: mpsc::Sender<Bytes>,
}

impl WatchStream {
    /// Streams until the client leaves, history is lost under it, or the server stops.
    async fn run(self, start: WatchStart) {
        let mut changed = self.shared.changed.subscribe();
        let mut shutdown = self.shared.shutdown.subscribe();
        for obj in start.initial.iter().filter(|o| self.filter.matches(o)) {
            if !self.send(EventType::Added.as_str(), obj).await {
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
                _ = shutdown.wait_for(|stop| *stop) => return,
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
