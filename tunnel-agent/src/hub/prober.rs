//! The I/O around [`Health`]: the probe loop, traffic-failure reports, the
//! switch log line and the `tunnel_agent_cloud_reachable` gauge.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use tokio::sync::watch;

use crate::hub::health::{Health, HealthPolicy, Reachability, Switch};
use crate::hub::settings::ProbeSettings;
use crate::hub::upstream::{Credentials, UpstreamClient};
use crate::metrics::AgentMetrics;

/// Path probed: answered by every apiserver, to anonymous users too.
pub const PROBE_PATH: &str = "/readyz";

/// Shared reachability: read by request handlers, changed by probes and traffic failures.
#[derive(Clone)]
pub struct HubHealth {
    machine: Arc<Mutex<Health>>,
    state: watch::Sender<Reachability>,
    metrics: AgentMetrics,
    client: Arc<UpstreamClient>,
}

impl HubHealth {
    /// Starts in [`Reachability::Starting`].
    pub fn new(policy: HealthPolicy, metrics: AgentMetrics, client: Arc<UpstreamClient>) -> Self {
        let (state, _) = watch::channel(Reachability::Starting);
        Self {
            machine: Arc::new(Mutex::new(Health::new(policy))),
            state,
            metrics,
            client,
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

    /// A proxied request failed at the transport level.
    pub fn traffic_failed(&self, reason: &str) {
        self.apply(|h| h.traffic_failed(reason));
    }

    fn apply(&self, event: impl FnOnce(&mut Health) -> Option<Switch>) {
        let switch = match self.machine.lock() {
            Ok(mut h) => event(&mut h),
            Err(_) => return,
        };
        let Some(switch) = switch else { return };
        match switch.to {
            Reachability::Offline => {
                tracing::warn!(reason = %switch.reason, "cloud unreachable: answering from the cache");
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

    /// Probes forever: a probe starts every `interval` (they may overlap, so a
    /// hung probe does not delay the next), each bounded by `timeout`.
    pub async fn run_prober(self, probe: ProbeSettings) {
        let mut tick = tokio::time::interval(probe.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let me = self.clone();
            let timeout = probe.timeout;
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(timeout, me.probe_once()).await;
                match outcome {
                    Ok(Ok(())) => me.apply(|h| h.probe_succeeded(Instant::now())),
                    Ok(Err(reason)) => me.apply(|h| h.probe_failed(&reason)),
                    Err(_) => {
                        me.apply(|h| h.probe_failed(&format!("no answer within {timeout:?}")))
                    }
                }
            });
        }
    }

    /// One probe: any HTTP answer below 500 means the apiserver is there.
    async fn probe_once(&self) -> Result<(), String> {
        let req = Request::get(PROBE_PATH)
            .header(hyper::header::USER_AGENT, "tunnel-agent-hub-probe")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .send(Credentials::NodeCertificate, req, false)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Drain the (small) body so the connection can be reused.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the probe answer: {e}"))?;
        if status.is_server_error() {
            return Err(format!("{PROBE_PATH} answered {status}"));
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
