//! Opening a tunneled connection to a destination at the edge.
//!
//! Every front end (HTTP CONNECT, gRPC, HTTP proxy, forwards) calls
//! [`Dialer::dial`]: route the host to its agent, enforce the stream and
//! pending-dial limits, ask the agent to dial, and wait for its answer. The
//! error says which status the front end should answer with.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::{DialErrorKind, DialResult, DialTarget, Host, Message, OpenStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use transport::framed::{read_message, write_message, FramedError};
use transport::{TunnelRecv, TunnelSend};

use crate::metrics::ServerMetrics;
use crate::registry::{AgentEntry, AgentRegistry, Lookup};

/// Which front end a stream came through (the `frontend` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    /// HTTP CONNECT on `--uds` / `--proxy-addr`.
    Connect,
    /// Absolute-URI requests and CONNECT on `--http-proxy-addr` (Prometheus).
    Http,
    /// A `--forward` listener.
    Forward,
    /// Konnectivity gRPC (`/ProxyService/Proxy`) on the same sockets.
    Grpc,
    /// TLS passthrough by server name on `--kubelet-addr`.
    Sni,
    /// Redirected connections by original destination on `--transparent-addr`.
    Transparent,
    /// A dial another replica asked for (its front end, our agent).
    Peer,
}

impl Frontend {
    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Connect => "connect",
            Frontend::Http => "http",
            Frontend::Forward => "forward",
            Frontend::Grpc => "grpc",
            Frontend::Sni => "sni",
            Frontend::Transparent => "transparent",
            Frontend::Peer => "peer",
        }
    }
}

/// Why a dial did not produce a stream; maps 1:1 to the spec's error table.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    #[error("no agent is registered for {host}")]
    NoAgent { host: String },
    #[error("IP {ip} is claimed by several connected nodes ({}); not routed by IP, use the node name", .nodes.join(", "))]
    Ambiguous {
        ip: std::net::IpAddr,
        nodes: Vec<String>,
    },
    #[error("server is at its limit of {limit} concurrent streams")]
    StreamLimit { limit: usize },
    #[error("the {flag} front end is at its limit of {limit} concurrent streams (--max-streams-{frontend}); the rest of --max-streams is kept for kube-apiserver")]
    FrontendLimit {
        flag: &'static str,
        frontend: &'static str,
        limit: usize,
    },
    #[error("server is at its limit of {limit} pending dials")]
    PendingLimit { limit: usize },
    #[error("node {node} is at its stream limit: {detail}")]
    NodeStreamLimit { node: String, detail: String },
    #[error("agent for node {node} refused {target}: {message}")]
    NotAllowed {
        node: String,
        target: String,
        message: String,
    },
    #[error("agent for node {node} could not dial {target} ({kind}): {message}")]
    DialFailed {
        node: String,
        target: String,
        kind: &'static str,
        message: String,
    },
    #[error("agent for node {node} timed out dialing {target}: {message}")]
    AgentTimeout {
        node: String,
        target: String,
        message: String,
    },
    #[error("no dial result for {target} from node {node} within {after:?}")]
    Timeout {
        node: String,
        target: String,
        after: Duration,
    },
    #[error("agent for node {node} disconnected while dialing {target}: {reason}")]
    AgentGone {
        node: String,
        target: String,
        reason: String,
    },
    #[error(
        "agent for node {node} answered the dial for {target} with an invalid message: {reason}"
    )]
    BadAnswer {
        node: String,
        target: String,
        reason: String,
    },
    /// The dial went through peer replica `server_id`, which failed it (its
    /// local failure's status, label and message) or broke off.
    #[error("{message} (through replica {server_id})")]
    Peer {
        server_id: String,
        status: u16,
        label: &'static str,
        message: String,
    },
}

impl DialFailure {
    /// The HTTP status the spec assigns to this failure.
    pub fn http_status(&self) -> u16 {
        match self {
            DialFailure::NoAgent { .. }
            | DialFailure::StreamLimit { .. }
            | DialFailure::FrontendLimit { .. }
            | DialFailure::PendingLimit { .. }
            | DialFailure::NodeStreamLimit { .. } => 503,
            DialFailure::NotAllowed { .. } => 403,
            DialFailure::Ambiguous { .. } => 409,
            DialFailure::DialFailed { .. } | DialFailure::BadAnswer { .. } => 502,
            DialFailure::AgentTimeout { .. }
            | DialFailure::Timeout { .. }
            | DialFailure::AgentGone { .. } => 504,
            DialFailure::Peer { status, .. } => *status,
        }
    }

    /// The `result` label of `tunnel_server_streams_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            DialFailure::NoAgent { .. } => "no_agent",
            DialFailure::Ambiguous { .. } => "ambiguous",
            DialFailure::StreamLimit { .. }
            | DialFailure::FrontendLimit { .. }
            | DialFailure::PendingLimit { .. }
            | DialFailure::NodeStreamLimit { .. } => "limit",
            DialFailure::NotAllowed { .. } => "not_allowed",
            DialFailure::DialFailed { .. } | DialFailure::BadAnswer { .. } => "dial_failed",
            DialFailure::AgentTimeout { .. } | DialFailure::Timeout { .. } => "timeout",
            DialFailure::AgentGone { .. } => "agent_gone",
            DialFailure::Peer { label, .. } => label,
        }
    }
}

/// A dialed stream: raw bytes to and from the edge destination.
///
/// Dropping it releases the stream slot and the active-stream gauges.
pub struct EdgeStream {
    pub send: TunnelSend,
    pub recv: TunnelRecv,
    pub stream_id: u64,
    pub node: String,
    pub _active: ActiveStream,
}

/// Keeps the gauges and the limit slots of one open stream.
pub struct ActiveStream {
    /// `None` for a stream a peer replica carries (no agent connection here).
    _slot: Option<NodeSlot>,
    gauge: prometheus::IntGauge,
    node_gauge: Option<prometheus::IntGauge>,
    _permit: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

/// One of a connection's `--max-streams-per-node` slots, taken from the
/// moment a dial starts (so dials in flight count) until the stream ends.
/// `AgentEntry::streams` is the count, as `/agents` shows it.
struct NodeSlot(Arc<AgentEntry>);

impl NodeSlot {
    fn take(agent: &Arc<AgentEntry>, limit: usize) -> Option<Self> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        agent
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| NodeSlot(agent.clone()))
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(g) = &self.node_gauge {
            g.dec();
        }
    }
}

/// How the dialer picks the agent.
#[derive(Debug, Clone, Copy)]
enum Route<'a> {
    /// By the target's host (node IP or node name), as the front ends do.
    ByTarget,
    /// The named node's agent, whatever the target host is (`--forward`).
    Node(&'a str),
}

/// Per-front-end shares of `--max-streams` and the idle timeout of spliced streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamQuotas {
    /// `--max-streams-forward`: most streams `--forward` listeners hold at once.
    pub forward: usize,
    /// `--max-streams-http-proxy`: most streams `--http-proxy-addr` holds at once.
    pub http_proxy: usize,
    /// `--stream-idle-timeout`: a spliced stream with no byte either way this long is reset.
    pub idle: Option<Duration>,
}

/// A front end's own stream limit, taken before the shared one.
struct Share {
    slots: Arc<Semaphore>,
    limit: usize,
    flag: &'static str,
    name: &'static str,
}

impl Share {
    fn new(limit: usize, flag: &'static str, name: &'static str) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            flag,
            name,
        }
    }
}

/// Routes and dials; shared by all front ends.
pub struct Dialer {
    forward_share: Option<Share>,
    http_share: Option<Share>,
    idle: Option<Duration>,
    registry: Arc<AgentRegistry>,
    metrics: ServerMetrics,
    dial_timeout: Duration,
    streams: Arc<Semaphore>,
    max_streams: usize,
    pending: Arc<Semaphore>,
    max_pending: usize,
    max_streams_per_node: usize,
    next_stream_id: std::sync::atomic::AtomicU64,
    /// Other replicas, for nodes not connected here (`--peer`).
    peers: Option<Arc<crate::peers::Peers>>,
    /// Set on SIGTERM: new dials go through peers first (so this replica's
    /// streams can run out), and peers are told no node is here.
    draining: std::sync::atomic::AtomicBool,
}

impl Dialer {
    /// A dialer with the given limits (for the whole server, and for the
    /// streams of one agent connection).
    pub fn new(
        registry: Arc<AgentRegistry>,
        metrics: ServerMetrics,
        dial_timeout: Duration,
        max_streams: usize,
        max_pending: usize,
    ) -> Self {
        Self {
            forward_share: None,
            http_share: None,
            idle: None,
            registry,
            metrics,
            dial_timeout,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            pending: Arc::new(Semaphore::new(max_pending)),
            max_pending,
            max_streams_per_node: max_streams,
            next_stream_id: std::sync::atomic::AtomicU64::new(1),
            peers: None,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// This replica drains: see the `draining` field.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Streams open (or dialing) through this replica now.
    pub fn open_streams(&self) -> usize {
        self.max_streams
            .saturating_sub(self.streams.available_permits())
    }

    /// Carries dials for nodes not connected here through `peers`.
    pub fn with_peers(mut self, peers: Arc<crate::peers::Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Whether an agent connected here answers for `target` (or is `node`);
    /// an IP several nodes claim counts (the dial will say it is ambiguous).
    pub fn has_local_route(&self, node: Option<&str>, target: &DialTarget) -> bool {
        if self.draining.load(Ordering::Acquire) {
            return false;
        }
        match node {
            Some(n) => self.registry.get(n).is_some(),
            None => !matches!(self.registry.lookup(target), Err(Lookup::NoAgent)),
        }
    }

    /// A dial through this replica's own agents only (a peer's request:
    /// it never goes on to another peer).
    pub async fn dial_local(
        &self,
        node: Option<&str>,
        target: &DialTarget,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        let route = node.map_or(Route::ByTarget, Route::Node);
        self.dial_measured(route, target, frontend, false, &[])
            .await
            .map(|(stream, _)| stream)
    }

    /// Limits the streams open (or dialing) on one agent connection.
    pub fn with_max_streams_per_node(mut self, limit: usize) -> Self {
        self.max_streams_per_node = limit;
        self
    }

    /// Limits `--forward` and `--http-proxy-addr` to their own shares of
    /// `--max-streams` (so CONNECT and gRPC from kube-apiserver always have
    /// the rest) and sets the idle timeout of spliced streams.
    pub fn with_quotas(mut self, q: StreamQuotas) -> Self {
        self.forward_share = Some(Share::new(q.forward, "--forward", "forward"));
        self.http_share = Some(Share::new(q.http_proxy, "--http-proxy-addr", "http-proxy"));
        self.idle = q.idle;
        self
    }

    /// The share `frontend` must hold a slot of, if it has one.
    fn share(&self, frontend: Frontend) -> Option<&Share> {
        match frontend {
            Frontend::Forward => self.forward_share.as_ref(),
            Frontend::Http => self.http_share.as_ref(),
            Frontend::Connect
            | Frontend::Grpc
            | Frontend::Sni
            | Frontend::Transparent
            | Frontend::Peer => None,
        }
    }

    /// Splices `local` to a dialed stream with the byte counters and the
    /// `--stream-idle-timeout` of this dialer; an idle end is counted.
    pub async fn splice<L>(
        &self,
        local: &mut L,
        send: TunnelSend,
        recv: TunnelRecv,
        node: &str,
        frontend: Frontend,
    ) -> transport::splice::SpliceOutcome
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let outcome = transport::splice::splice_with_idle(
            local,
            send,
            recv,
            self.byte_counter(node),
            self.idle,
        )
        .await;
        if outcome.end == transport::splice::SpliceEnd::Idle {
            self.record_idle_end(node, frontend);
        }
        outcome
    }

    /// `--stream-idle-timeout`, for front ends that carry streams themselves.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle
    }

    /// Counts and logs a stream closed for `--stream-idle-timeout`.
    pub fn record_idle_end(&self, node: &str, frontend: Frontend) {
        self.metrics
            .idle_timeouts
            .with_label_values(&[frontend.as_str()])
            .inc();
        tracing::info!(%node, frontend = frontend.as_str(), idle = ?self.idle,
            "stream idle for --stream-idle-timeout; closed");
    }

    /// The metrics this dialer records into (front ends add their own).
    pub fn metrics(&self) -> &ServerMetrics {
        &self.metrics
    }

    /// Asks the agent that answers for `target` to dial it.
    pub async fn dial(
        &self,
        target: &DialTarget,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        self.dial_routed(Route::ByTarget, target, frontend).await
    }

    /// Asks the agent of `node` to dial `target`, whatever host `target`
    /// names (`--forward` reaches e.g. `127.0.0.1:6443` on one node). The
    /// agent's allowlist still decides.
    pub async fn dial_via(
        &self,
        node: &str,
        target: &DialTarget,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        self.dial_routed(Route::Node(node), target, frontend).await
    }

    /// Asks the agent of `node` to dial `port` on the node's own address:
    /// the first IP of its certificate, or `127.0.0.1` (on the node) when the
    /// certificate has none. For front ends that know a node but no address
    /// (SNI passthrough routes by server name).
    pub async fn dial_node_port(
        &self,
        node: &str,
        port: u16,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        let ip = self
            .registry
            .get(node)
            .and_then(|e| e.ips.first().copied())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let target = DialTarget::new(Host::Ip(ip), port);
        self.dial_via(node, &target, frontend).await
    }

    /// [`Dialer::dial_via`] for a client that spoke first: `first` (the
    /// bytes it already sent) goes out right behind the open frame instead
    /// of after the dial result, so its answer comes one round trip over the
    /// link sooner. The agent reads the open frame only, dials, and then
    /// splices, so `first` reaches the target first, exactly once; a failed
    /// dial discards it with the stream. Returns whether `first` went out:
    /// not on the peer path, where the caller writes it before splicing.
    pub async fn dial_via_with_first_bytes(
        &self,
        node: &str,
        target: &DialTarget,
        frontend: Frontend,
        first: &[u8],
    ) -> Result<(EdgeStream, bool), DialFailure> {
        self.dial_measured(Route::Node(node), target, frontend, true, first)
            .await
    }

    /// [`Dialer::dial`] with the client's first bytes sent behind the open
    /// frame (see [`Dialer::dial_via_with_first_bytes`]): the HTTP proxy's
    /// request on a new edge connection.
    pub async fn dial_with_first_bytes(
        &self,
        target: &DialTarget,
        frontend: Frontend,
        first: &[u8],
    ) -> Result<(EdgeStream, bool), DialFailure> {
        self.dial_measured(Route::ByTarget, target, frontend, true, first)
            .await
    }

    async fn dial_routed(
        &self,
        route: Route<'_>,
        target: &DialTarget,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        self.dial_measured(route, target, frontend, true, &[])
            .await
            .map(|(stream, _)| stream)
    }

    async fn dial_measured(
        &self,
        route: Route<'_>,
        target: &DialTarget,
        frontend: Frontend,
        via_peers: bool,
        first: &[u8],
    ) -> Result<(EdgeStream, bool), DialFailure> {
        let started = Instant::now();
        let result = self
            .dial_inner(route, target, frontend, via_peers, first)
            .await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.result_label(),
        };
        self.metrics
            .streams_total
            .with_label_values(&[frontend.as_str(), label])
            .inc();
        self.metrics
            .dial_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok((s, _)) => tracing::debug!(node = %s.node, stream_id = s.stream_id, %target,
                frontend = frontend.as_str(), elapsed_ms = started.elapsed().as_millis() as u64, "dial succeeded"),
            Err(e) => {
                tracing::info!(%target, frontend = frontend.as_str(), error = %e, "dial failed")
            }
        }
        result
    }

    async fn dial_inner(
        &self,
        route: Route<'_>,
        target: &DialTarget,
        frontend: Frontend,
        via_peers: bool,
        first: &[u8],
    ) -> Result<(EdgeStream, bool), DialFailure> {
        let agent = match route {
            Route::ByTarget => self.registry.lookup(target),
            Route::Node(node) => self.registry.get(node).ok_or(Lookup::NoAgent),
        };
        if let (Some(peers), true) = (&self.peers, via_peers) {
            if matches!(agent, Err(Lookup::NoAgent)) {
                return self
                    .dial_peer(peers, route, target, frontend)
                    .await
                    .map(|s| (s, false));
            }
            if self.draining.load(Ordering::Acquire) {
                match self.dial_peer(peers, route, target, frontend).await {
                    Err(DialFailure::NoAgent { .. }) => {} // only here: dial locally
                    done => return done.map(|s| (s, false)),
                }
            }
        }
        let agent = agent.map_err(|e| match e {
            Lookup::Ambiguous { ip, nodes } => DialFailure::Ambiguous { ip, nodes },
            Lookup::NoAgent => DialFailure::NoAgent {
                host: match route {
                    Route::ByTarget => target.host_string(),
                    Route::Node(node) => node.to_string(),
                },
            },
        })?;
        let (share_permit, stream_permit) = self.permits(frontend)?;
        let slot = NodeSlot::take(&agent, self.max_streams_per_node).ok_or_else(|| {
            DialFailure::NodeStreamLimit {
                node: agent.node.clone(),
                detail: format!(
                    "{} streams open or dialing (--max-streams-per-node)",
                    self.max_streams_per_node
                ),
            }
        })?;
        let _pending_permit =
            self.pending
                .try_acquire()
                .map_err(|_| DialFailure::PendingLimit {
                    limit: self.max_pending,
                })?;
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let node = agent.node.clone();
        let gone = |e: &dyn std::fmt::Display| DialFailure::AgentGone {
            node: node.clone(),
            target: target.to_string(),
            reason: e.to_string(),
        };
        let deadline = tokio::time::Instant::now() + self.dial_timeout;
        let timed_out = || DialFailure::Timeout {
            node: node.clone(),
            target: target.to_string(),
            after: self.dial_timeout,
        };

        let halves = tokio::time::timeout_at(deadline, agent.link.open_stream())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| match e {
                transport::StreamError::Limit(detail) => DialFailure::NodeStreamLimit {
                    node: node.clone(),
                    detail,
                },
                e => gone(&e),
            })?;
        // From here on, giving up (timeout, or this future dropped because
        // the front-end client left) resets the stream, so the agent drops
        // its dial instead of finishing a connection nobody will use.
        let mut pending = PendingStream(Some(halves));
        let (send, recv) = pending.halves();
        send.control_phase();
        let open = Message::Open(OpenStream {
            stream_id,
            target: target.clone(),
        });
        let mut first_lost = None;
        let answer = tokio::time::timeout_at(deadline, async {
            write_message(send, &open).await?;
            if !first.is_empty() {
                // A failed write means the stream is gone; the answer (or
                // its absence) below says why.
                first_lost = send.write_all(first).await.err();
            }
            read_message(recv).await
        })
        .await
        .map_err(|_| timed_out())?;
        if let (Some(e), Ok(Message::DialResult(DialResult::Connected))) = (&first_lost, &answer) {
            return Err(gone(e));
        }
        let target_s = target.to_string();
        match answer {
            Ok(Message::DialResult(DialResult::Connected)) => {
                let (mut send, recv) = pending.complete();
                send.data_phase();
                let gauge = self
                    .metrics
                    .streams_active
                    .with_label_values(&[frontend.as_str()]);
                gauge.inc();
                let node_gauge = self.metrics.node_stream_opened(&node);
                let stream = EdgeStream {
                    send,
                    recv,
                    stream_id,
                    node,
                    _active: ActiveStream {
                        _slot: Some(slot),
                        gauge,
                        node_gauge,
                        _permit: stream_permit,
                        _share: share_permit,
                    },
                };
                Ok((stream, !first.is_empty()))
            }
            Ok(Message::DialResult(DialResult::Failed { kind, message })) => Err(match kind {
                DialErrorKind::NotAllowed => DialFailure::NotAllowed {
                    node,
                    target: target_s,
                    message,
                },
                DialErrorKind::Timeout => DialFailure::AgentTimeout {
                    node,
                    target: target_s,
                    message,
                },
                other => DialFailure::DialFailed {
                    node,
                    target: target_s,
                    kind: other.as_str(),
                    message,
                },
            }),
            Ok(other) => Err(DialFailure::BadAnswer {
                node,
                target: target_s,
                reason: format!("expected a dial result, got {other:?}"),
            }),
            Err(FramedError::Stream(e)) => Err(gone(&e)),
            Err(FramedError::UnexpectedEof) => Err(gone(&"stream closed before the dial result")),
            Err(e) => Err(DialFailure::BadAnswer {
                node,
                target: target_s,
                reason: e.to_string(),
            }),
        }
    }

    /// The dial of a node not connected here, through the peer that has it;
    /// it holds this replica's stream slots like a local one.
    async fn dial_peer(
        &self,
        peers: &Arc<crate::peers::Peers>,
        route: Route<'_>,
        target: &DialTarget,
        frontend: Frontend,
    ) -> Result<EdgeStream, DialFailure> {
        let (share_permit, stream_permit) = self.permits(frontend)?;
        let node = match route {
            Route::ByTarget => None,
            Route::Node(n) => Some(n),
        };
        let stream = peers
            .dial(node, target, frontend, self.dial_timeout)
            .await?;
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let node = node.map_or_else(|| target.host_string(), str::to_owned);
        tracing::debug!(%node, stream_id, %target, replica = %stream.server_id, "dialed through a peer replica");
        let gauge = self
            .metrics
            .streams_active
            .with_label_values(&[frontend.as_str()]);
        gauge.inc();
        Ok(EdgeStream {
            send: stream.send,
            recv: stream.recv,
            stream_id,
            node,
            _active: ActiveStream {
                _slot: None,
                gauge,
                node_gauge: None,
                _permit: stream_permit,
                _share: share_permit,
            },
        })
    }

    /// A slot of `frontend`'s own share (if it has one) and of `--max-streams`.
    fn permits(
        &self,
        frontend: Frontend,
    ) -> Result<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit), DialFailure> {
        let share = self.share_permit(frontend)?;
        let stream =
            self.streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| DialFailure::StreamLimit {
                    limit: self.max_streams,
                })?;
        Ok((share, stream))
    }

    /// A slot of `frontend`'s own share, if it has one.
    fn share_permit(
        &self,
        frontend: Frontend,
    ) -> Result<Option<OwnedSemaphorePermit>, DialFailure> {
        match self.share(frontend) {
            None => Ok(None),
            Some(share) => share
                .slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| DialFailure::FrontendLimit {
                    flag: share.flag,
                    frontend: share.name,
                    limit: share.limit,
                }),
        }
    }

    /// Counts bytes moved through a stream of `node` into
    /// `tunnel_server_bytes_total` (and the per-node series when enabled).
    pub fn byte_counter(
        &self,
        node: &str,
    ) -> impl Fn(transport::splice::Direction, usize) + Send + Sync + 'static {
        let to_edge = self.metrics.bytes_total.with_label_values(&["to_edge"]);
        let from_edge = self.metrics.bytes_total.with_label_values(&["from_edge"]);
        let per_node = self.metrics.node_byte_counters(node);
        move |dir, n| {
            let (total, node) = match dir {
                transport::splice::Direction::ToTunnel => {
                    (&to_edge, per_node.as_ref().map(|(t, _)| t))
                }
                transport::splice::Direction::FromTunnel => {
                    (&from_edge, per_node.as_ref().map(|(_, f)| f))
                }
            };
            total.inc_by(n as u64);
            if let Some(c) = node {
                c.inc_by(n as u64);
            }
        }
    }
}

/// A stream whose dial is in flight; reset unless [`PendingStream::complete`] is called.
struct PendingStream(Option<(TunnelSend, TunnelRecv)>);

impl PendingStream {
    /// Both halves, for writing the open frame and reading the answer.
    fn halves(&mut self) -> (&mut TunnelSend, &mut TunnelRecv) {
        let (s, r) = self.0.as_mut().expect("halves taken only by complete()");
        (s, r)
    }

    /// The dial succeeded: hand the stream over without resetting it.
    fn complete(mut self) -> (TunnelSend, TunnelRecv) {
        self.0.take().expect("completed once")
    }
}

impl Drop for PendingStream {
    fn drop(&mut self) {
        if let Some((mut send, mut recv)) = self.0.take() {
            send.reset(proto::codes::STREAM_CANCELLED);
            recv.stop(proto::codes::STREAM_CANCELLED);
        }
    }
}
