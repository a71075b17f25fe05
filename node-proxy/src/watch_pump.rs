//! Streaming a watch while recording it: a reader splits the upstream body
//! into events as fast as they come (bounded queue); the recorder takes all
//! queued events, records them in one group commit, and only then forwards
//! them, byte for byte. So the client never sees an event that is not on
//! disk, and one fsync covers many events (thousands per second per watch).

use std::sync::Arc;

use autonomy_cache::WatchDecoder;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::record::{abort, CacheFailures, RecordCtx, Stop};
use crate::respond::{send_data, BodySender, HubBody};

/// Watch events larger than this end the watch (the client re-watches).
pub const MAX_WATCH_EVENT: usize = 16 << 20;

/// Bytes of decoded events waiting for their record, per watch.
const MAX_QUEUED_BYTES: usize = 8 << 20;

/// Most events recorded in one batch.
const MAX_EVENTS_PER_BATCH: usize = 4096;

/// What the reader queues for the recorder.
enum Queued {
    /// One decoded event line and its share of the queue budget.
    Event(Bytes, OwnedSemaphorePermit),
    /// The upstream body failed; nothing follows.
    Failed(String),
}

/// Streams a watch; ends cleanly (so the client re-watches) when the cloud goes offline.
pub async fn pump_watch(upstream: HubBody, mut tx: BodySender, mut ctx: RecordCtx) {
    let (queue_tx, mut queue) = mpsc::unbounded_channel::<Queued>();
    let budget = Arc::new(Semaphore::new(MAX_QUEUED_BYTES));
    let reader = tokio::spawn(read_events(
        upstream,
        queue_tx,
        budget,
        ctx.failures.clone(),
        ctx.component.clone(),
    ));
    let stop = loop {
        let first = tokio::select! {
            q = queue.recv() => q,
            _ = ctx.reachability.wait_for(|r| !r.forwards()) => break Some(Stop::Offline),
        };
        // A closed queue: the upstream ended cleanly.
        let Some(first) = first else { break None };
        let mut failed = None;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Queued::Event(ev, permit) => batch.push((ev, permit)),
                Queued::Failed(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if batch.len() < MAX_EVENTS_PER_BATCH {
                next = queue.try_recv().ok();
            }
        }
        let records = batch.iter().map(|(ev, _)| {
            ctx.cache
                .record_watch_event(&ctx.component, &ctx.info, ev.clone())
        });
        for r in futures::future::join_all(records).await {
            if let Err(e) = r {
                ctx.failures
                    .report("record_watch_event", &ctx.component, &e);
            }
        }
        // Durable: the client may see them now, each line as upstream sent it
        // (the decoder drops the newline; the apiserver ends lines with "\n"),
        // or as the response filter rewrote it.
        let mut out = BytesMut::with_capacity(batch.iter().map(|(e, _)| e.len() + 1).sum());
        for (event, _) in &batch {
            match ctx.filter.as_ref().and_then(|f| f.event(event)) {
                Some(filtered) => out.extend_from_slice(&filtered),
                None => out.extend_from_slice(event),
            }
            out.extend_from_slice(b"\n");
        }
        drop(batch);
        if !out.is_empty() && !send_data(&mut tx, out.freeze()).await {
            break Some(Stop::ClientGone);
        }
        if let Some(e) = failed {
            break Some(Stop::Upstream(e));
        }
    };
    reader.abort();
    match stop {
        // Offline: a clean end, as the apiserver ends a watch at its timeout.
        None | Some(Stop::Offline) => {}
        Some(stop) => abort(&mut tx, &ctx.component, stop).await,
    }
}

/// Reads the upstream body and queues whole event lines, waiting for budget
/// when the recorder is behind (backpressure reaches the apiserver).
async fn read_events(
    mut body: HubBody,
    queue: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    failures: CacheFailures,
    component: String,
) {
    if let Err(e) = decode_into(&mut body, &queue, &budget, &failures, &component).await {
        let _ = queue.send(Queued::Failed(e));
    }
}

async fn decode_into(
    body: &mut HubBody,
    queue: &mpsc::UnboundedSender<Queued>,
    budget: &Arc<Semaphore>,
    failures: &CacheFailures,
    component: &str,
) -> Result<(), String> {
    let mut decoder = WatchDecoder::new(MAX_WATCH_EVENT);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let events = decoder.push(&data).map_err(|e| {
            failures.report("watch_decode", component, &e);
            format!("undecodable watch stream: {e}")
        })?;
        for event in events {
            let cost = event.len().clamp(1, MAX_QUEUED_BYTES) as u32;
            let permit = budget
                .clone()
                .acquire_many_owned(cost)
                .await
                .map_err(|_| "watch queue closed".to_string())?;
            if queue.send(Queued::Event(event, permit)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
