//! `--max-connections-per-listener`: each front-end listener holds at most
//! that many client connections; one more is answered at once (503 on the
//! HTTP listeners, closed on raw `--forward` ports), logged (rate-limited)
//! and counted in `tunnel_server_connections_refused_total{listener}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::log_limit::LogLimit;
use crate::metrics::ServerMetrics;

/// The connection budget of one listener.
pub struct ConnCap {
    slots: Arc<Semaphore>,
    limit: usize,
    listener: String,
    refused: prometheus::IntCounter,
    log: LogLimit,
}

impl ConnCap {
    /// A budget of `limit` connections for `listener` (its flag or address, the metric label).
    pub fn new(limit: usize, listener: impl Into<String>, metrics: &ServerMetrics) -> Self {
        let listener = listener.into();
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            refused: metrics
                .connections_refused
                .with_label_values(&[listener.as_str()]),
            listener,
            log: LogLimit::new(Duration::from_secs(5)),
        }
    }

    /// A slot held for the connection's life, or `None` (counted and logged) at the cap.
    pub fn admit(&self, peer: &dyn std::fmt::Display) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.refused.inc();
                if let Some(suppressed) = self.log.allow(Instant::now()) {
                    tracing::warn!(listener = %self.listener, limit = self.limit, %peer, suppressed,
                        "listener at --max-connections-per-listener; refusing the connection");
                }
                None
            }
        }
    }

    /// The body of the 503 answer.
    pub fn message(&self) -> String {
        format!(
            "{} is at its limit of {} connections (--max-connections-per-listener)",
            self.listener, self.limit
        )
    }
}
