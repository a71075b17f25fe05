//! Streaming an upstream response to the client while recording it in the
//! cache: whole bodies for get/list, event by event for watches (each event
//! reaches the client only once it is durable).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::hub::cache::{AutonomyCache, RequestInfo, WatchDecoder};
use crate::hub::health::Reachability;
use crate::hub::respond::{send_data, BodySender};
use crate::metrics::AgentMetrics;

/// Bodies larger than this are passed through but not cached.
pub const MAX_RECORDED_BODY: usize = 64 << 20;

/// Watch events larger than this end the watch (the client re-watches).
pub const MAX_WATCH_EVENT: usize = 16 << 20;

/// At most this many watch events are recorded in one batch before being forwarded.
const MAX_EVENTS_PER_BATCH: usize = 512;

/// Logs each kind of cache failure once (then only counts it): a full disk
/// must not flood the log, and must never fail the request.
#[derive(Clone)]
pub struct CacheFailures {
    logged: Arc<Mutex<HashSet<&'static str>>>,
    metrics: AgentMetrics,
}

impl CacheFailures {
    /// Nothing logged yet.
    pub fn new(metrics: AgentMetrics) -> Self {
        Self {
            logged: Arc::new(Mutex::new(HashSet::new())),
            metrics,
        }
    }

    /// Counts a failure of `kind`; logs it the first time.
    pub fn report(&self, kind: &'static str, component: &str, error: &dyn std::fmt::Display) {
        self.metrics.cache_errors.with_label_values(&[kind]).inc();
        let first = self
            .logged
            .lock()
            .map(|mut l| l.insert(kind))
            .unwrap_or(false);
        if first {
            tracing::warn!(kind, component, error = %error,
                "autonomy cache failure; requests are still proxied (logged once per kind)");
        }
    }
}

/// What a pump needs besides the bodies.
pub struct RecordCtx {
    pub cache: AutonomyCache,
    pub component: String,
    pub info: RequestInfo,
    pub failures: CacheFailures,
    pub reachability: watch::Receiver<Reachability>,
}

/// Why a pump stopped early.
enum Stop {
    ClientGone,
    Upstream(String),
    Offline,
}

/// Streams a get/list body to the client, then records it if it fit in
/// [`MAX_RECORDED_BODY`]. Ends the client's response with an error if the
/// upstream fails or the cloud goes offline mid-body.
pub async fn pump_body(upstream: Incoming, mut tx: BodySender, mut ctx: RecordCtx) {
    let mut body = upstream;
    let mut kept = Some(BytesMut::new());
    let stop = loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = ctx.reachability.wait_for(|r| !r.forwards()) => break Some(Stop::Offline),
        };
        let data = match frame {
            None => break None,
            Some(Err(e)) => break Some(Stop::Upstream(e.to_string())),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if let Some(buf) = kept.as_mut() {
            if buf.len() + data.len() > MAX_RECORDED_BODY {
                tracing::info!(component = %ctx.component, limit = MAX_RECORDED_BODY,
                    "response larger than the cache's per-response limit: passed through, not cached");
                ctx.failures
                    .metrics
                    .cache_errors
                    .with_label_values(&["too_large"])
                    .inc();
                kept = None;
            } else {
                buf.extend_from_slice(&data);
            }
        }
        if !send_data(&mut tx, data).await {
            break Some(Stop::ClientGone);
        }
    };
    match stop {
        None => {
            if let Some(buf) = kept {
                let r = ctx
                    .cache
                    .record_response(&ctx.component, &ctx.info, buf.freeze())
                    .await;
                if let Err(e) = r {
                    ctx.failures.report("record_response", &ctx.component, &e);
                }
            }
        }
        Some(stop) => abort(&mut tx, &ctx.component, stop).await,
    }
}

/// Streams a watch: each event line is recorded, then forwarded byte for
/// byte. The stream ends (cleanly, so the client re-watches) when the cloud
/// goes offline.
pub async fn pump_watch(upstream: Incoming, mut tx: BodySender, mut ctx: RecordCtx) {
    let mut body = upstream;
    let mut decoder = WatchDecoder::new(MAX_WATCH_EVENT);
    let stop = loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = ctx.reachability.wait_for(|r| !r.forwards()) => break Some(Stop::Offline),
        };
        let data = match frame {
            None => break None,
            Some(Err(e)) => break Some(Stop::Upstream(e.to_string())),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        let mut events = match decoder.push(&data) {
            Ok(ev) => ev,
            Err(e) => {
                ctx.failures.report("watch_decode", &ctx.component, &e);
                break Some(Stop::Upstream(format!("undecodable watch stream: {e}")));
            }
        };
        // Take what else has already arrived, so one group commit covers it all.
        let mut upstream_ended = false;
        while events.len() < MAX_EVENTS_PER_BATCH {
            match body.frame().now_or_never() {
                Some(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        match decoder.push(&d) {
                            Ok(more) => events.extend(more),
                            Err(e) => {
                                ctx.failures.report("watch_decode", &ctx.component, &e);
                                upstream_ended = true;
                                break;
                            }
                        }
                    }
                }
                Some(None) | Some(Some(Err(_))) => {
                    upstream_ended = true;
                    break;
                }
                None => break,
            }
        }
        let records = events.iter().map(|ev| {
            ctx.cache
                .record_watch_event(&ctx.component, &ctx.info, ev.clone())
        });
        for r in futures::future::join_all(records).await {
            if let Err(e) = r {
                ctx.failures
                    .report("record_watch_event", &ctx.component, &e);
            }
        }
        // Durable: now the client may see them, in order, each line as upstream
        // sent it (the decoder drops the newline; the apiserver ends lines with "\n").
        if !events.is_empty() {
            let mut out = BytesMut::with_capacity(events.iter().map(|e| e.len() + 1).sum());
            for event in &events {
                out.extend_from_slice(event);
                out.extend_from_slice(b"\n");
            }
            if !send_data(&mut tx, out.freeze()).await {
                break Some(Stop::ClientGone);
            }
        }
        if upstream_ended {
            break None;
        }
    };
    match stop {
        // Offline: a clean end, as the apiserver ends a watch at its timeout.
        None | Some(Stop::Offline) => {}
        Some(stop) => abort(&mut tx, &ctx.component, stop).await,
    }
}

async fn abort(tx: &mut BodySender, component: &str, stop: Stop) {
    let reason = match stop {
        Stop::ClientGone => return,
        Stop::Offline => "the cloud went offline mid-response".to_string(),
        Stop::Upstream(e) => e,
    };
    tracing::info!(component, reason = %reason, "response cut short");
    let _ = futures::SinkExt::send(tx, Err(std::io::Error::other(reason))).await;
}
