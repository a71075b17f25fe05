//! `--forward`: cloud TCP listeners whose connections a named node's agent
//! carries to a fixed edge destination.
//!
//! The set of forwards can change at run time (SIGHUP re-reads the config):
//! [`plan`] decides which listeners to stop and start, [`Forwards::apply`]
//! does it. Stopping a listener closes only the listening socket; connections
//! it accepted run in their own tasks and continue until their ends close.

pub mod spec;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::Instrument;
use transport::socket::AbortOnDrop;
use transport::splice::SpliceEnd;

use crate::frontend::conn_cap::ConnCap;

use crate::dial::{Dialer, EdgeStream, Frontend};
pub use spec::{parse_forward, ForwardParseError, ForwardSpec};

/// A forward listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding --forward {spec}: {source}")]
pub struct ForwardBindError {
    pub spec: ForwardSpec,
    pub source: std::io::Error,
}

/// What to change to get from the running forwards to the desired ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Running forwards that are no longer wanted (stopped first, so a
    /// changed destination on the same port can rebind it).
    pub stop: Vec<ForwardSpec>,
    /// Wanted forwards that are not running yet.
    pub start: Vec<ForwardSpec>,
}

/// Diffs the running set against the desired list (duplicates ignored);
/// the order of `desired` is kept for starting.
pub fn plan<'a>(
    running: impl IntoIterator<Item = &'a ForwardSpec>,
    desired: &[ForwardSpec],
) -> Plan {
    let running: HashSet<&ForwardSpec> = running.into_iter().collect();
    let wanted: HashSet<&ForwardSpec> = desired.iter().collect();
    let mut stop: Vec<ForwardSpec> = running
        .iter()
        .filter(|f| !wanted.contains(*f))
        .map(|f| (*f).clone())
        .collect();
    stop.sort_by_key(|f| f.to_string());
    let mut seen = HashSet::new();
    let start = desired
        .iter()
        .filter(|f| !running.contains(f) && seen.insert(*f))
        .cloned()
        .collect();
    Plan { stop, start }
}

/// One running forward listener.
struct Running {
    task: JoinHandle<()>,
    local: SocketAddr,
}

/// The running forward listeners.
pub struct Forwards {
    dialer: Arc<Dialer>,
    running: HashMap<ForwardSpec, Running>,
    max_connections: usize,
}

impl Forwards {
    /// No forwards yet; each one started holds at most `max_connections`
    /// client connections (`--max-connections-per-listener`).
    pub fn new(dialer: Arc<Dialer>, max_connections: usize) -> Self {
        Self {
            dialer,
            running: HashMap::new(),
            max_connections,
        }
    }

    /// Stops forwards not in `desired` and starts the new ones. Returns the
    /// forwards that could not be bound (the others are applied regardless).
    pub async fn apply(&mut self, desired: &[ForwardSpec]) -> Vec<ForwardBindError> {
        let plan = plan(self.running.keys(), desired);
        for spec in plan.stop {
            if let Some(r) = self.running.remove(&spec) {
                r.task.abort();
                // Waiting for the task guarantees the socket is closed
                // before a replacement binds the same address.
                let _ = r.task.await;
                tracing::info!(forward = %spec, "forward stopped (open connections continue)");
            }
        }
        let mut errors = Vec::new();
        for spec in plan.start {
            match TcpListener::bind(spec.listen).await {
                Ok(l) => {
                    let local = l.local_addr().unwrap_or(spec.listen);
                    tracing::info!(forward = %spec, %local, "forward listening");
                    let cap = ConnCap::new(
                        self.max_connections,
                        format!("forward {local}"),
                        self.dialer.metrics(),
                    );
                    let task =
                        tokio::spawn(serve(l, Arc::new(spec.clone()), self.dialer.clone(), cap));
                    self.running.insert(spec, Running { task, local });
                }
                Err(source) => errors.push(ForwardBindError { spec, source }),
            }
        }
        errors
    }

    /// The bound address of each running forward (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(ForwardSpec, SocketAddr)> {
        self.running
            .iter()
            .map(|(s, r)| (s.clone(), r.local))
            .collect()
    }
}

impl Drop for Forwards {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// Accepts until aborted; beyond the cap a connection is closed at once
/// (a raw port has no way to say why; the log and metric do).
async fn serve(listener: TcpListener, spec: Arc<ForwardSpec>, dialer: Arc<Dialer>, cap: ConnCap) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let Some(slot) = cap.admit(&peer) else {
                    drop(sock);
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (spec, dialer) = (spec.clone(), dialer.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    carry(sock, peer, spec, dialer).await
                });
            }
            Err(e) => transport::http_server::accept_backoff(&spec.to_string(), &e).await,
        }
    }
}

/// How long a new connection's first bytes may take to arrive before the
/// dial goes out without them. A client that speaks first (HTTP, TLS, the
/// apiserver's protocols) sends them in the same flight as the handshake's
/// last ACK, so they are there within microseconds of the accept; a server-
/// speaks-first protocol (SSH, SMTP) pays at most this once per connection,
/// against the round trip over the link the others save.
const FIRST_BYTES_WAIT: Duration = Duration::from_millis(2);

/// Most first bytes carried with the open (one read).
const FIRST_BYTES_MAX: usize = 16 * 1024;

/// The bytes the client has already sent, waiting at most [`FIRST_BYTES_WAIT`].
async fn first_bytes(sock: &TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; FIRST_BYTES_MAX];
    let read = async {
        loop {
            sock.readable().await?;
            match sock.try_read(&mut buf) {
                // A readiness event without data (a fresh socket can have
                // one): wait on within the deadline.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                done => return done,
            }
        }
    };
    match tokio::time::timeout(FIRST_BYTES_WAIT, read).await {
        Ok(Ok(n)) => buf.truncate(n),
        // Nothing in time, or an error the splice will meet again: dial
        // without first bytes.
        _ => buf.clear(),
    }
    buf
}

/// Dials through the node's agent (with the client's first bytes, when it
/// spoke first) and splices; on failure the client connection is closed and
/// the reason logged.
async fn carry(mut sock: TcpStream, peer: SocketAddr, spec: Arc<ForwardSpec>, dialer: Arc<Dialer>) {
    let first = first_bytes(&sock).await;
    let (stream, first_sent) = match dialer
        .dial_via_with_first_bytes(&spec.node, &spec.target, Frontend::Forward, &first)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(forward = %spec, %peer, node = %spec.node, reason = e.result_label(),
                error = %e, "forward dial failed; closing the client connection");
            return;
        }
    };
    let EdgeStream {
        mut send,
        recv,
        stream_id,
        node,
        _active,
    } = stream;
    if !first_sent && !first.is_empty() && send.write_all(&first).await.is_err() {
        tracing::debug!(forward = %spec, %peer, %node, stream_id, "stream lost before the first bytes");
        return;
    }
    // The splice counts what it copies; the first bytes went before it.
    dialer.byte_counter(&node)(transport::splice::Direction::ToTunnel, first.len());
    let span = tracing::info_span!("stream", node = %node, stream_id, forward = %spec, %peer);
    async {
        let outcome = dialer
            .splice(&mut sock, send, recv, &node, Frontend::Forward)
            .await;
        tracing::debug!(to_edge = outcome.to_tunnel, from_edge = outcome.from_tunnel,
            end = ?outcome.end, "forward connection closed");
        if matches!(
            outcome.end,
            SpliceEnd::TunnelReset | SpliceEnd::TunnelLost | SpliceEnd::Idle
        ) {
            let _ = sock.abort_on_drop();
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> ForwardSpec {
        parse_forward(s).unwrap()
    }

    #[test]
    fn plan_stops_removed_and_starts_new() {
        let running = [f("9000=a/x:1"), f("9001=a/x:2")];
        let desired = [f("9001=a/x:2"), f("9002=b/y:3")];
        let p = plan(running.iter(), &desired);
        assert_eq!(p.stop, vec![f("9000=a/x:1")]);
        assert_eq!(p.start, vec![f("9002=b/y:3")]);
    }

    #[test]
    fn a_changed_destination_is_a_stop_and_a_start() {
        let running = [f("9000=a/x:1")];
        let p = plan(running.iter(), &[f("9000=a/x:2")]);
        assert_eq!(p.stop, vec![f("9000=a/x:1")]);
        assert_eq!(p.start, vec![f("9000=a/x:2")]);
    }

    #[test]
    fn unchanged_sets_and_duplicates_do_nothing() {
        let running = [f("9000=a/x:1")];
        assert_eq!(
            plan(running.iter(), &[f("9000=a/x:1"), f("9000=a/x:1")]),
            Plan::default()
        );
        let p = plan([].iter(), &[f("9000=a/x:1"), f("9000=a/x:1")]);
        assert_eq!(p.start.len(), 1);
    }
}
