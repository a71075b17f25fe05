//! The I/O around [`Health`]: the probe loop, traffic-failure reports, the
//! switch log line and the `tunnel_agent_cloud_reachable` gauge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use tokio::sync::{watch, Notify};

use crate::health::{Health, HealthPolicy, OfflineReason, Reachability, ReasonLog, Switch};
use crate::metrics::HubMetrics;
use crate::probe_schedule::{ProbeDue, ProbeInputs, ProbeSchedule, WaiterId, Waiters};
use crate::settings::ProbeSettings;
use crate::upstream::{Credentials, LinkLiveness, UpstreamClient};

/// Path probed: answered by every apiserver, to anonymous users too.
pub const PROBE_PATH: &str = "/readyz";

/// Why the hub is offline while the tunnel is down.
const NO_TUNNEL: &str = "the agent has no connection to the tunnel server";

/// The same offline reason is logged at most this often (a changed one at once).
const REASON_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why the hub is offline now, and when that was last logged.
struct OfflineState {
    current: Option<OfflineReason>,
    log: ReasonLog,
}

/// What the probe schedule needs to know about upstream traffic.
#[derive(Default)]
struct Traffic {
    waiters: Waiters,
    last_answer: Option<Instant>,
}

/// Shared reachability: read by request handlers, changed by probes and traffic failures.
#[derive(Clone)]
pub struct HubHealth {
    machine: Arc<Mutex<Health>>,
    offline: Arc<Mutex<OfflineState>>,
    state: watch::Sender<Reachability>,
    metrics: HubMetrics,
    client: Arc<UpstreamClient>,
    traffic: Arc<Mutex<Traffic>>,
    /// Wakes the prober: a request started waiting, or the state changed.
    wake: Arc<Notify>,
    /// The tunnel under the upstream is down: probes still in flight then
    /// fail for that reason, whatever error they saw.
    link_down: Arc<AtomicBool>,
}

/// A proxied request waiting for its answer; dropping it ends the wait.
pub struct Waiting {
    health: HubHealth,
    id: WaiterId,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut t) = self.health.traffic.lock() {
            t.waiters.end(self.id);
        }
    }
}

impl HubHealth {
    /// Starts in [`Reachability::Starting`].
    pub fn new(policy: HealthPolicy, metrics: HubMetrics, client: Arc<UpstreamClient>) -> Self {
        let (state, _) = watch::channel(Reachability::Starting);
        Self {
            machine: Arc::new(Mutex::new(Health::new(policy))),
            offline: Arc::new(Mutex::new(OfflineState {
                current: None,
                log: ReasonLog::new(REASON_LOG_EVERY),
            })),
            state,
            metrics,
            client,
            traffic: Arc::default(),
            wake: Arc::default(),
            link_down: Arc::default(),
        }
    }

    /// A proxied request starts waiting for upstream's answer (until the guard drops).
    pub fn waiting(&self) -> Option<Waiting> {
        let id = self.traffic.lock().ok()?.waiters.begin(Instant::now());
        self.wake.notify_one();
        Some(Waiting {
            health: self.clone(),
            id,
        })
    }

    /// Upstream answered a proxied request: as good as a successful probe while online.
    pub fn answered(&self) {
        if let Ok(mut t) = self.traffic.lock() {
            t.last_answer = Some(Instant::now());
        }
    }

    /// The current state.
    pub fn current(&self) -> Reachability {
        *self.state.borrow()
    }

    /// Follows state changes (handlers wait on it to stop waiting for upstream).
    pub fn subscribe(&self) -> watch::Receiver<Reachability> {
        self.state.subscribe()
    }

    /// Why the hub is offline now (`None` while forwarding).
    pub fn offline_reason(&self) -> Option<OfflineReason> {
        self.offline.lock().ok().and_then(|o| o.current)
    }

    /// A proxied request failed at the transport level.
    pub fn traffic_failed(&self, reason: OfflineReason, detail: &str) {
        self.apply(Some((reason, detail)), |h| h.traffic_failed(detail));
    }

    /// Applies a probe result or traffic failure (`failure`: why, if it failed).
    fn apply(
        &self,
        failure: Option<(OfflineReason, &str)>,
        event: impl FnOnce(&mut Health) -> Option<Switch>,
    ) {
        let (switch, state) = match self.machine.lock() {
            Ok(mut h) => (event(&mut h), h.state()),
            Err(_) => return,
        };
        self.note_reason(failure, state, switch.is_some());
        let Some(switch) = switch else { return };
        self.wake.notify_one();
        match switch.to {
            Reachability::Offline => {
                let cause = self
                    .offline_reason()
                    .map(OfflineReason::label)
                    .unwrap_or_default();
                tracing::warn!(reason = %switch.reason, cause, "cloud unreachable: answering from the cache");
                self.client.forget_idle();
                self.metrics.cloud_reachable.set(0);
            }
            Reachability::Online | Reachability::Starting => {
                tracing::info!(reason = %switch.reason, "cloud reachable: proxying upstream");
                self.metrics.cloud_reachable.set(1);
            }
        }
        self.metrics
            .hub_switches
            .with_label_values(&[state_label(switch.to)])
            .inc();
        self.state.send_replace(switch.to);
    }

    /// Probes forever, when [`ProbeSchedule`] says a probe is due (probes may
    /// overlap, so a hung probe does not delay the next), each bounded by
    /// `timeout`. With `link` (the tunnel), a link that goes down makes the
    /// hub offline at once.
    pub async fn run_prober(self, probe: ProbeSettings, mut link: Option<Box<dyn LinkLiveness>>) {
        let schedule = ProbeSchedule {
            interval: probe.interval,
            idle_interval: probe.idle_interval,
        };
        let mut last_probe = None;
        let mut was_up = true;
        loop {
            let link_up = link.as_ref().map(|l| l.is_up());
            self.link_down
                .store(link_up == Some(false), Ordering::Relaxed);
            if link_up == Some(false) && was_up {
                self.apply(Some((OfflineReason::TunnelNotConnected, NO_TUNNEL)), |h| {
                    h.traffic_failed(NO_TUNNEL)
                });
            }
            was_up = link_up != Some(false);
            let now = Instant::now();
            let (last_answer, oldest_waiting) = match self.traffic.lock() {
                Ok(t) => (t.last_answer, t.waiters.oldest()),
                Err(_) => (None, None),
            };
            let due = schedule.next(ProbeInputs {
                now,
                state: self.current(),
                link_up,
                last_probe,
                last_answer,
                oldest_waiting,
            });
            let sleep = match due {
                ProbeDue::At(at) if at <= now => {
                    last_probe = Some(now);
                    tokio::spawn(self.clone().probe(probe.timeout));
                    continue;
                }
                ProbeDue::At(at) => Some(tokio::time::Instant::from_std(at)),
                ProbeDue::Nothing => None,
            };
            let link_changed = async {
                match link.as_mut() {
                    Some(l) => l.changed().await,
                    None => std::future::pending().await,
                }
            };
            let slept = async {
                match sleep {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = slept => {}
                _ = link_changed => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One probe and its effect on the state.
    async fn probe(self, timeout: Duration) {
        let failure = match tokio::time::timeout(timeout, self.probe_once()).await {
            Ok(Ok(())) => {
                self.answered();
                return self.apply(None, |h| h.probe_succeeded(Instant::now()));
            }
            Ok(Err(failure)) => failure,
            Err(_) => (
                OfflineReason::Timeout,
                format!("no answer within {timeout:?}"),
            ),
        };
        let (reason, detail) = if self.link_down.load(Ordering::Relaxed) {
            (OfflineReason::TunnelNotConnected, NO_TUNNEL.to_string())
        } else {
            failure
        };
        self.apply(Some((reason, &detail)), |h| h.probe_failed(&detail))
    }

    /// Keeps the current offline reason, its gauge and its rate-limited log line.
    fn note_reason(
        &self,
        failure: Option<(OfflineReason, &str)>,
        state: Reachability,
        switched: bool,
    ) {
        let Ok(mut offline) = self.offline.lock() else {
            return;
        };
        let current = match (state, failure) {
            (Reachability::Offline, Some((reason, detail))) => {
                // The switch line names the first reason; later changes get their own.
                if offline.log.should_log(reason, Instant::now()) && !switched {
                    tracing::warn!(cause = reason.label(), error = %detail,
                        "node proxy still offline: {}", reason.label());
                }
                Some(reason)
            }
            (Reachability::Offline, None) => offline.current,
            (Reachability::Online | Reachability::Starting, _) => {
                offline.log.clear();
                None
            }
        };
        offline.current = current;
        for reason in OfflineReason::ALL {
            self.metrics
                .hub_offline
                .with_label_values(&[reason.label()])
                .set(i64::from(current == Some(reason)));
        }
    }

    /// One probe: any HTTP answer below 500 means the apiserver is there.
    async fn probe_once(&self) -> Result<(), (OfflineReason, String)> {
        let http = |e: &dyn std::fmt::Display| (OfflineReason::HttpFailed, e.to_string());
        let req = Request::get(PROBE_PATH)
            .header(hyper::header::USER_AGENT, "tunnel-agent-hub-probe")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| http(&e))?;
        let resp = self
            .client
            .send(Credentials::NodeCertificate, req, false)
            .await
            .map_err(|e| (e.offline_reason(), e.to_string()))?;
        let status = resp.status();
        // Drain the (small) body so the connection can be reused.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| http(&format!("reading the probe answer: {e}")))?;
        if status.is_server_error() {
            let detail = format!("{PROBE_PATH} answered {status}");
            return Err((OfflineReason::ServerError, detail));
        }
        Ok(())
    }
}

/// Label value of a state in metrics.
fn state_label(r: Reachability) -> &'static str {
    match r {
        Reachability::Starting => "starting",
        Reachability::Online => "online",
        Reachability::Offline => "offline",
    }
}
