//! One connection per server address: resolving every `--server` name, and
//! starting or stopping a [`Connector`] as addresses come and go.
//!
//! A name that resolves to several addresses (a headless Service) is one
//! server per address; every `--server-resolve-interval` the names are
//! resolved again, new addresses get a connector, vanished ones are stopped
//! (their connection closed cleanly). A name that fails to resolve keeps the
//! addresses it had: a DNS hiccup must not drop working connections. The
//! decision is the sans-IO [`plan`]; [`run`] does the resolving and the tasks.
//!
//! Behind an HTTP proxy (`--proxy`, `HTTPS_PROXY`) the agent may have no DNS
//! of its own: each `--server` is then one server, reached by name through
//! the proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::connector::Connector;
use crate::metrics::AgentMetrics;

/// A `--server` flag: HOST (also the TLS server name of all its addresses) and PORT.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerName {
    pub host: String,
    pub port: u16,
}

/// One server the agent keeps a connection to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The `--server` it came from (TLS server name, `Host` of the upgrade).
    pub name: ServerName,
    /// The address dialed; `None` behind a proxy (the proxy resolves the name).
    pub addr: Option<SocketAddr>,
}

impl ServerTarget {
    /// The `server` label and the key of this target: its address, or
    /// `HOST:PORT` when unresolved.
    pub fn key(&self) -> String {
        match self.addr {
            Some(a) => a.to_string(),
            None => format!("{}:{}", self.name.host, self.name.port),
        }
    }
}

/// What to change after a round of resolving.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New targets: start a connector for each.
    pub start: Vec<ServerTarget>,
    /// Keys of targets no name resolves to any more: stop them.
    pub stop: Vec<String>,
}

/// Compares the running targets with what each name resolved to (sans-IO).
///
/// A name whose resolution failed keeps its running targets; an address two
/// names resolve to is one server (the first name is its TLS name).
pub fn plan(
    running: &BTreeMap<String, ServerTarget>,
    resolved: &[(ServerName, Result<Vec<SocketAddr>, String>)],
) -> Plan {
    let mut wanted: BTreeMap<String, ServerTarget> = BTreeMap::new();
    for (name, result) in resolved {
        match result {
            Ok(addrs) => {
                for addr in addrs {
                    let t = ServerTarget {
                        name: name.clone(),
                        addr: Some(*addr),
                    };
                    wanted.entry(t.key()).or_insert(t);
                }
            }
            Err(_) => {
                for (key, t) in running.iter().filter(|(_, t)| &t.name == name) {
                    wanted.entry(key.clone()).or_insert_with(|| t.clone());
                }
            }
        }
    }
    Plan {
        start: wanted
            .iter()
            .filter(|(k, _)| !running.contains_key(*k))
            .map(|(_, t)| t.clone())
            .collect(),
        stop: running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect(),
    }
}

/// Resolves `name` (bounded by `limit`), sorted and deduplicated.
async fn resolve(name: &ServerName, limit: Duration) -> Result<Vec<SocketAddr>, String> {
    let lookup = tokio::net::lookup_host((name.host.as_str(), name.port));
    let mut addrs: Vec<SocketAddr> = match tokio::time::timeout(limit, lookup).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer within {limit:?}")),
    };
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no addresses".into());
    }
    Ok(addrs)
}

/// A connector task and the switch that stops it.
struct Running {
    target: ServerTarget,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What [`run`] needs besides the names.
pub struct Supervisor<F> {
    pub names: Vec<ServerName>,
    /// Resolve the names (false behind a proxy: one server per name).
    pub resolve: bool,
    pub interval: Duration,
    /// Builds the connector of one target.
    pub connector: F,
    pub metrics: AgentMetrics,
}

impl<F: Fn(ServerTarget) -> Connector> Supervisor<F> {
    /// Keeps one connector per target until `shutdown` turns true, then
    /// stops them all (each closes its connection) and waits for them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut running: BTreeMap<String, Running> = BTreeMap::new();
        loop {
            let p = self.next_plan(&running).await;
            for key in p.stop {
                if let Some(r) = running.remove(&key) {
                    tracing::info!(server = %key, "server address vanished; closing its connection");
                    self.stop(key, r);
                }
            }
            for target in p.start {
                let key = target.key();
                tracing::info!(server = %key, name = %target.name.host, "connecting to server address");
                let (stop, stop_rx) = watch::channel(false);
                let span = tracing::info_span!("server", server = %key);
                let task = tokio::spawn(
                    (self.connector)(target.clone())
                        .run(stop_rx)
                        .instrument(span),
                );
                running.insert(key, Running { target, stop, task });
            }
            // Without any server yet (DNS not up?), look again sooner.
            let wait = if running.is_empty() {
                self.interval.min(Duration::from_secs(2))
            } else {
                self.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        let waits: Vec<_> = running
            .into_values()
            .map(|r| {
                let _ = r.stop.send(true);
                r.task
            })
            .collect();
        for task in waits {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }

    /// What to start and stop now: behind a proxy every name once, else
    /// [`plan`] over a fresh resolution of every name.
    async fn next_plan(&self, running: &BTreeMap<String, Running>) -> Plan {
        if !self.resolve {
            let start = self
                .names
                .iter()
                .map(|n| ServerTarget {
                    name: n.clone(),
                    addr: None,
                })
                .filter(|t| !running.contains_key(&t.key()))
                .collect();
            return Plan {
                start,
                stop: Vec::new(),
            };
        }
        let mut resolved = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let result = resolve(name, Duration::from_secs(5)).await;
            if let Err(e) = &result {
                tracing::warn!(server = %format!("{}:{}", name.host, name.port), error = %e,
                    "cannot resolve server; keeping its current connections");
            }
            resolved.push((name.clone(), result));
        }
        let current: BTreeMap<String, ServerTarget> = running
            .iter()
            .map(|(k, r)| (k.clone(), r.target.clone()))
            .collect();
        plan(&current, &resolved)
    }

    /// Stops one connector in the background and drops its metric series.
    fn stop(&self, key: String, r: Running) {
        let _ = r.stop.send(true);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), r.task).await;
            for t in transport::TransportKind::ALL {
                let _ = metrics
                    .connected
                    .remove_label_values(&[t.as_str(), key.as_str()]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(h: &str) -> ServerName {
        ServerName {
            host: h.into(),
            port: 8132,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        format!("{s}:8132").parse().unwrap()
    }

    fn running(targets: &[(&str, &str)]) -> BTreeMap<String, ServerTarget> {
        targets
            .iter()
            .map(|(h, a)| {
                let t = ServerTarget {
                    name: name(h),
                    addr: Some(addr(a)),
                };
                (t.key(), t)
            })
            .collect()
    }

    #[test]
    fn every_address_is_one_server() {
        let p = plan(
            &BTreeMap::new(),
            &[(name("tunnel"), Ok(vec![addr("10.0.0.1"), addr("10.0.0.2")]))],
        );
        let keys: Vec<String> = p.start.iter().map(ServerTarget::key).collect();
        assert_eq!(keys, ["10.0.0.1:8132", "10.0.0.2:8132"]);
        assert!(p.start.iter().all(|t| t.name.host == "tunnel"));
        assert!(p.stop.is_empty());
    }

    #[test]
    fn new_addresses_start_and_vanished_ones_stop() {
        let now = running(&[("tunnel", "10.0.0.1"), ("tunnel", "10.0.0.2")]);
        let p = plan(
            &now,
            &[(name("tunnel"), Ok(vec![addr("10.0.0.2"), addr("10.0.0.4")]))],
        );
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.start[0].key(), "10.0.0.4:8132");
        assert_eq!(p.stop, ["10.0.0.1:8132"]);
        let same = plan(
            &now,
            &[(name("tunnel"), Ok(vec![addr("10.0.0.1"), addr("10.0.0.2")]))],
        );
        assert_eq!(same, Plan::default());
    }

    #[test]
    fn a_failed_lookup_keeps_that_names_servers_only() {
        let now = running(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]);
        let p = plan(
            &now,
            &[
                (name("a"), Err("SERVFAIL".into())),
                (name("b"), Ok(vec![addr("10.0.0.3")])),
            ],
        );
        assert_eq!(p.stop, ["10.0.0.2:8132"]);
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.start[0].key(), "10.0.0.3:8132");
    }

    #[test]
    fn an_address_of_two_names_is_one_server() {
        let p = plan(
            &BTreeMap::new(),
            &[
                (name("a"), Ok(vec![addr("10.0.0.1")])),
                (name("b"), Ok(vec![addr("10.0.0.1")])),
            ],
        );
        assert_eq!(p.start.len(), 1);
        assert_eq!(p.start[0].name.host, "a");
    }
}
