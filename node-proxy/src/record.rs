//! Streaming an upstream response to the client while recording it in the
//! cache: whole bodies for get/list, event by event for watches (each event
//! reaches the client only once it is durable).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use autonomy_cache::{AutonomyCache, RequestInfo};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::watch;

use crate::filters::ResponseFilter;
use crate::health::Reachability;
use crate::metrics::HubMetrics;
use crate::respond::{send_data, BodySender, HubBody};

/// Bodies larger than this are passed through but not cached.
pub const MAX_RECORDED_BODY: usize = 64 << 20;

/// Logs each kind of cache failure once (then only counts it): a full disk
/// must not flood the log, and must never fail the request.
#[derive(Clone)]
pub struct CacheFailures {
    logged: Arc<Mutex<HashSet<&'static str>>>,
    pub(crate) metrics: HubMetrics,
}

impl CacheFailures {
    /// Nothing logged yet.
    pub fn new(metrics: HubMetrics) -> Self {
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
    /// Rewrites what the client sees (the cache records upstream's bytes).
    pub filter: Option<ResponseFilter>,
}

/// Why a pump stopped early.
pub(crate) enum Stop {
    ClientGone,
    Upstream(String),
    Offline,
}

/// Streams a get/list body to the client and records it if it fits in
/// [`MAX_RECORDED_BODY`]. The last chunk is held back until the record is
/// durable, so a client that read the whole answer knows it is cached. A
/// filtered response is held whole (the filter needs all of it) and sent
/// once recorded; one too large to record is passed through unfiltered.
/// Ends the client's response with an error if the upstream fails or the
/// cloud goes offline mid-body.
pub async fn pump_body(upstream: HubBody, mut tx: BodySender, mut ctx: RecordCtx) {
    let mut body = upstream;
    let mut kept = Some(BytesMut::new());
    let mut held: Option<Bytes> = None;
    let mut whole = ctx.filter.is_some();
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
                let so_far = kept.take().map(BytesMut::freeze);
                if std::mem::take(&mut whole) {
                    tracing::warn!(component = %ctx.component,
                        "response too large to filter: passed through unfiltered");
                    if let Some(so_far) = so_far {
                        if !send_data(&mut tx, so_far).await {
                            break Some(Stop::ClientGone);
                        }
                    }
                }
            } else {
                buf.extend_from_slice(&data);
            }
        }
        if whole {
            continue;
        }
        if let Some(previous) = held.replace(data) {
            if !send_data(&mut tx, previous).await {
                break Some(Stop::ClientGone);
            }
        }
    };
    match stop {
        None => {
            let recorded = kept.map(BytesMut::freeze);
            if let Some(buf) = &recorded {
                let r = ctx
                    .cache
                    .record_response(&ctx.component, &ctx.info, buf.clone())
                    .await;
                if let Err(e) = r {
                    ctx.failures.report("record_response", &ctx.component, &e);
                }
            }
            let last = match (whole, recorded) {
                (true, Some(buf)) => {
                    let filtered = ctx.filter.as_ref().and_then(|f| f.body(&buf));
                    Some(filtered.unwrap_or(buf))
                }
                _ => held,
            };
            if let Some(last) = last {
                send_data(&mut tx, last).await;
            }
        }
        Some(stop) => abort(&mut tx, &ctx.component, stop).await,
    }
}

/// Ends the client's response with an error (unless the client is gone), logging why.
pub(crate) async fn abort(tx: &mut BodySender, component: &str, stop: Stop) {
    let reason = match stop {
        Stop::ClientGone => return,
        Stop::Offline => "the cloud went offline mid-response".to_string(),
        Stop::Upstream(e) => e,
    };
    tracing::info!(component, reason = %reason, "response cut short");
    let _ = futures::SinkExt::send(tx, Err(std::io::Error::other(reason))).await;
}
