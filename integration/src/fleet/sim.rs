//! Simulated agents: many real QUIC agent connections in one process.
//!
//! Each simulated agent has its own certificate, dials with the agent's QUIC
//! transport settings (taken from `tunnel-agent`'s own flag defaults, see
//! [`AgentSettings`]), says hello on a control stream exactly like
//! `tunnel_agent::connector`, and then serves the streams the server opens:
//! it reads the `Open` frame, answers `Connected` and echoes the bytes
//! itself instead of dialing anything. When its connection is lost it waits
//! per the real agent's [`Backoff`] and dials again.
//!
//! Connections share a few quinn endpoints ([`Fleet::start`]) instead of one
//! UDP socket per agent as the real agent has: the server sees one UDP
//! 4-tuple per connection either way, and thousands of sockets would only
//! spend this process's descriptors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use proto::{DialResult, Hello, HelloAck, Message, PROTOCOL_VERSION};
use tokio::sync::watch;
use tokio::task::JoinSet;
use transport::framed::{read_message, read_message_timeout, write_message};
use transport::quic::QuicTuning;
use transport::{TunnelConnection, TunnelRecv, TunnelSend};
use tunnel_agent::backoff::{spread_from_hint, Backoff, DEFAULT_RECONNECT_SPREAD};

/// How long a server-opened stream may take to send its `Open` frame (the
/// real agent's `edge::OPEN_TIMEOUT` is of the same order).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every simulated agent dials with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub tuning: QuicTuning,
    /// Limit for the QUIC handshake; the hello answer may take three times this.
    pub connect_timeout: Duration,
}

impl AgentSettings {
    /// The real agent's settings: `tunnel-agent`'s command line parsed with
    /// `agent_args` (empty: its defaults), as `tunnel_agent::agent` maps
    /// them onto [`QuicTuning`], except the stream credit.
    ///
    /// `stream_credit` replaces [`transport::quic::AGENT_STREAM_CREDIT`]:
    /// quinn allocates state for every stream it lets the peer open, about
    /// 1.9 MB per connection at the agent's 25,000, which would be 19 GB in
    /// this one process at 10,000 agents. It is agent-side memory only: the
    /// server's cost, and the idle bytes on the wire, do not depend on it.
    pub fn from_agent_flags(agent_args: &[String], stream_credit: u32) -> anyhow::Result<Self> {
        let cli = tunnel_agent::config::Cli::try_parse_from(
            std::iter::once("tunnel-agent".to_string()).chain(agent_args.iter().cloned()),
        )
        .context("parsing --agent-arg flags as tunnel-agent flags")?;
        Ok(Self {
            tuning: QuicTuning {
                keep_alive: cli.keepalive,
                idle_timeout: cli.idle_timeout,
                congestion: cli.congestion_control,
                max_incoming_streams: stream_credit,
                ..QuicTuning::default()
            },
            connect_timeout: cli.connect_timeout,
        })
    }
}

/// One simulated agent's identity: node name and TLS client configuration.
pub struct Identity {
    pub node: String,
    pub tls: rustls::ClientConfig,
}

/// Node name of simulated agent `i` (0-based): `sim-00001`, ...
pub fn node_name(i: usize) -> String {
    format!("sim-{:05}", i + 1)
}

/// Issues `n` agent certificates (no IP SANs; the agents announce none)
/// from the test CA in `pki`, in memory.
pub fn identities(pki: &crate::Pki, n: usize) -> anyhow::Result<Vec<Identity>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca = pki.ca()?;
    let roots = certs::load_root_store(&pki.path(certs::bundle::CA_CERT_FILE))?;
    let validity = Duration::from_secs(24 * 3600);
    (0..n)
        .map(|i| {
            let node = node_name(i);
            let id = certs::NodeIdentity::new(node.clone(), Vec::new())?;
            let issued = ca.issue_agent(&id, validity)?;
            let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .context("parsing an issued certificate")?;
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
                .context("parsing an issued key")?;
            let tls = certs::agent_client_config(
                roots.clone(),
                vec![cert],
                key,
                vec![proto::ALPN_QUIC.to_vec()],
            )?;
            Ok(Identity { node, tls })
        })
        .collect()
}

/// Wire counters of QUIC connections (UDP payload, as quinn counts it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wire {
    /// Agents → server.
    pub tx_bytes: u64,
    pub tx_datagrams: u64,
    /// Server → agents.
    pub rx_bytes: u64,
    pub rx_datagrams: u64,
}

impl Wire {
    fn of(c: &quinn::Connection) -> Self {
        let s = c.stats();
        Self {
            tx_bytes: s.udp_tx.bytes,
            tx_datagrams: s.udp_tx.datagrams,
            rx_bytes: s.udp_rx.bytes,
            rx_datagrams: s.udp_rx.datagrams,
        }
    }

    /// Counters accumulated since `earlier`.
    pub fn since(&self, earlier: &Wire) -> Wire {
        Wire {
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_datagrams: self.tx_datagrams.saturating_sub(earlier.tx_datagrams),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_datagrams: self.rx_datagrams.saturating_sub(earlier.rx_datagrams),
        }
    }

    fn add(&mut self, o: &Wire) {
        self.tx_bytes += o.tx_bytes;
        self.tx_datagrams += o.tx_datagrams;
        self.rx_bytes += o.rx_bytes;
        self.rx_datagrams += o.rx_datagrams;
    }
}

/// One agent's live state, read by the measurements.
#[derive(Default)]
struct Slot {
    registered: AtomicBool,
    conn: Mutex<Option<quinn::Connection>>,
    /// When the agent last registered, and last noticed its connection gone.
    up_at: Mutex<Option<Instant>>,
    down_at: Mutex<Option<Instant>>,
}

/// State shared by all simulated agents.
struct Shared {
    slots: Vec<Slot>,
    registered: AtomicUsize,
    /// Registrations over the fleet's life (first ones and reconnects).
    registrations: AtomicU64,
    failed_attempts: AtomicU64,
    /// Streams echoed to their end / streams that failed.
    streams_done: AtomicU64,
    streams_failed: AtomicU64,
    /// Wire counters of connections that have ended.
    closed: Mutex<Wire>,
    /// The first error of a failed attempt, for the report.
    first_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn up(&self, i: usize, conn: &quinn::Connection) {
        *lock(&self.slots[i].conn) = Some(conn.clone());
        *lock(&self.slots[i].up_at) = Some(Instant::now());
        self.slots[i].registered.store(true, Ordering::Release);
        self.registered.fetch_add(1, Ordering::AcqRel);
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    fn down(&self, i: usize) {
        *lock(&self.slots[i].down_at) = Some(Instant::now());
        self.slots[i].registered.store(false, Ordering::Release);
        self.registered.fetch_sub(1, Ordering::AcqRel);
        if let Some(c) = lock(&self.slots[i].conn).take() {
            lock(&self.closed).add(&Wire::of(&c));
        }
    }

    fn failed(&self, e: &anyhow::Error) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_error);
        if first.is_none() {
            *first = Some(format!("{e:#}"));
        }
    }
}

/// Counters of the whole fleet at one instant.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub registered: usize,
    pub registrations: u64,
    pub failed_attempts: u64,
    pub streams_done: u64,
    pub streams_failed: u64,
    pub first_error: Option<String>,
}

/// N simulated agents running on the current tokio runtime.
pub struct Fleet {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    endpoints: Vec<quinn::Endpoint>,
}

impl Fleet {
    /// Starts one task per identity, all at once, dialing `server`;
    /// `per_endpoint` connections share each quinn client endpoint.
    pub fn start(
        ids: &[Identity],
        server: SocketAddr,
        per_endpoint: usize,
        settings: &AgentSettings,
    ) -> anyhow::Result<Self> {
        let Some(first) = ids.first() else {
            bail!("a fleet needs at least one agent");
        };
        let per_endpoint = per_endpoint.max(1);
        let mut endpoints = Vec::new();
        for _ in 0..ids.len().div_ceil(per_endpoint) {
            endpoints.push(transport::quic::client_endpoint(
                server,
                first.tls.clone(),
                &settings.tuning,
            )?);
        }
        let shared = Arc::new(Shared {
            slots: (0..ids.len()).map(|_| Slot::default()).collect(),
            registered: AtomicUsize::new(0),
            registrations: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            streams_done: AtomicU64::new(0),
            streams_failed: AtomicU64::new(0),
            closed: Mutex::new(Wire::default()),
            first_error: Mutex::new(None),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let cfg = transport::quic::client_config(id.tls.clone(), &settings.tuning)?;
            let sim = SimAgent {
                index: i,
                node: id.node.clone(),
                cfg,
                endpoint: endpoints[i / per_endpoint].clone(),
                server,
                settings: settings.clone(),
                shared: shared.clone(),
            };
            tasks.spawn(sim.run(stop_rx.clone()));
        }
        Ok(Self {
            shared,
            stop,
            tasks,
            endpoints,
        })
    }

    pub fn len(&self) -> usize {
        self.shared.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.slots.is_empty()
    }

    /// Whether agent `i` holds a registered connection now.
    pub fn is_registered(&self, i: usize) -> bool {
        self.shared
            .slots
            .get(i)
            .is_some_and(|s| s.registered.load(Ordering::Acquire))
    }

    /// Whether agent `i` registered (again) after `t` and holds that
    /// connection now: after a server restart, the agents the new server knows.
    pub fn registered_since(&self, i: usize, t: Instant) -> bool {
        self.is_registered(i)
            && self
                .shared
                .slots
                .get(i)
                .and_then(|s| *lock(&s.up_at))
                .is_some_and(|up| up > t)
    }

    /// For the agents that lost their connection after `t`: how long after
    /// `t` each noticed (sorted).
    pub fn noticed_loss_since(&self, t: Instant) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .shared
            .slots
            .iter()
            .filter_map(|s| *lock(&s.down_at))
            .filter(|d| *d > t)
            .map(|d| d - t)
            .collect();
        v.sort();
        v
    }

    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            registered: s.registered.load(Ordering::Acquire),
            registrations: s.registrations.load(Ordering::Relaxed),
            failed_attempts: s.failed_attempts.load(Ordering::Relaxed),
            streams_done: s.streams_done.load(Ordering::Relaxed),
            streams_failed: s.streams_failed.load(Ordering::Relaxed),
            first_error: lock(&s.first_error).clone(),
        }
    }

    /// Wire counters of every connection so far (ended ones included).
    pub fn wire(&self) -> Wire {
        let mut total = *lock(&self.shared.closed);
        for slot in &self.shared.slots {
            if let Some(c) = lock(&slot.conn).as_ref() {
                total.add(&Wire::of(c));
            }
        }
        total
    }

    /// Stops every agent (closing its connection) and the endpoints.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        for ep in &self.endpoints {
            ep.close(proto::codes::CONN_SHUTDOWN.into(), b"fleet stopping");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
    }
}

/// One simulated agent.
struct SimAgent {
    index: usize,
    node: String,
    cfg: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    settings: AgentSettings,
    shared: Arc<Shared>,
}

/// The server refused the connection before the handshake: busy.
#[derive(Debug, thiserror::Error)]
#[error("server busy: connection refused before the handshake (--max-pending-handshakes)")]
struct Busy;

impl SimAgent {
    /// Connects, serves and reconnects (with the agent's backoff) until stopped.
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        // As the agent: the server's hint, or the default before any.
        let mut spread = DEFAULT_RECONNECT_SPREAD;
        let session = format!("{:016x}", rand::random::<u64>());
        loop {
            let attempt = tokio::select! {
                r = self.connect(&session) => r,
                _ = stop.changed() => return,
            };
            match attempt {
                Ok((conn, control, hint)) => {
                    backoff.reset();
                    spread = hint;
                    self.shared.up(self.index, &conn);
                    let link = TunnelConnection::Quic(conn.clone());
                    let stopping = tokio::select! {
                        why = serve(link, control, self.shared.clone()) => {
                            tracing::debug!(node = %self.node, %why, "connection lost");
                            false
                        }
                        _ = stop.changed() => true,
                    };
                    self.shared.down(self.index);
                    conn.close(proto::codes::CONN_SHUTDOWN.into(), b"agent shutting down");
                    if stopping {
                        return;
                    }
                }
                Err(e) if e.is::<Busy>() => {
                    // Refused before the handshake (--max-pending-handshakes).
                    self.shared.failed(&e);
                    let delay = backoff.next_busy_delay(rand::random(), rand::random(), spread);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(node = %self.node, error = %e, "cannot register");
                    self.shared.failed(&e);
                }
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// QUIC handshake, control stream, hello, and the server's verdict.
    async fn connect(
        &self,
        session: &str,
    ) -> anyhow::Result<(quinn::Connection, (TunnelSend, TunnelRecv), Duration)> {
        let limit = self.settings.connect_timeout;
        let connecting = self
            .endpoint
            .connect_with(self.cfg.clone(), self.server, "localhost")?;
        let conn = match tokio::time::timeout(limit, connecting)
            .await
            .with_context(|| format!("no QUIC handshake within {limit:?}"))?
        {
            Err(e) if transport::quic::refused_as_busy(&e) => return Err(Busy.into()),
            other => other?,
        };
        let link = TunnelConnection::Quic(conn.clone());
        let (mut send, mut recv) = link.open_stream().await?;
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_name: self.node.clone(),
            node_ips: Vec::new(),
            agent_version: concat!("fleet-bench/", env!("CARGO_PKG_VERSION")).to_string(),
            capabilities: vec![format!("session={session}")],
        });
        write_message(&mut send, &hello).await?;
        match read_message_timeout(&mut recv, limit * 3).await? {
            Message::HelloAck(HelloAck::Accepted {
                reconnect_spread_ms,
                ..
            }) => Ok((conn, (send, recv), spread_from_hint(reconnect_spread_ms))),
            Message::HelloAck(HelloAck::Rejected { reason, message }) => {
                bail!("registration refused ({}): {message}", reason.as_str())
            }
            other => bail!("unexpected answer to the hello: {other:?}"),
        }
    }
}

/// Serves streams until the connection or its control stream ends.
async fn serve(
    link: TunnelConnection,
    control: (TunnelSend, TunnelRecv),
    shared: Arc<Shared>,
) -> String {
    let (_control_send, mut control_recv) = control;
    let control = async { while read_message(&mut control_recv).await.is_ok() {} };
    let accept = async {
        loop {
            match link.accept_stream().await {
                Ok((send, recv)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let counter = match echo(send, recv).await {
                            Ok(()) => &shared.streams_done,
                            Err(_) => &shared.streams_failed,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    });
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    tokio::select! {
        why = accept => why,
        _ = control => "server closed the control stream".to_string(),
    }
}

/// Answers a server-opened stream as a dial that succeeded, then echoes
/// every byte until the server half-closes.
async fn echo(mut send: TunnelSend, mut recv: TunnelRecv) -> anyhow::Result<()> {
    match read_message_timeout(&mut recv, OPEN_TIMEOUT).await {
        Ok(Message::Open(_)) => {}
        other => {
            send.reset(proto::codes::STREAM_PROTOCOL_ERROR);
            recv.stop(proto::codes::STREAM_PROTOCOL_ERROR);
            bail!("stream did not start with an open frame: {other:?}");
        }
    }
    write_message(&mut send, &Message::DialResult(DialResult::Connected)).await?;
    while let Some(chunk) = recv.read_chunk().await? {
        send.write_chunk(chunk).await?;
    }
    send.finish().await;
    Ok(())
}
