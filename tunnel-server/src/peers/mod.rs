//! The peer path: front-end requests for nodes connected to another replica.
//!
//! Each replica knows only its own agents. When a front end asks for a node
//! that is not connected here, the [`Dialer`](crate::dial::Dialer) hands the
//! dial to [`Peers::dial`]: every peer (`--peer`, each resolved address) is
//! asked in parallel whether that node is connected to it (a short, bounded
//! lookup), the dial goes to the first that says yes, and that answer is
//! cached briefly so the next dial to the node skips the lookup. The peer
//! dials through its own agent and answers with the status its local dial
//! had; the stream then carries the bytes. A node no peer has is a 503 at
//! once.
//!
//! Replicas talk over TLS on each other's agent port (ALPN [`ALPN_PEER`]),
//! one multiplexed connection per peer, one stream per request. The asking
//! side checks the peer's server certificate like an agent does (against
//! the name in its own `--tls-cert`, which replicas share) and shows
//! its peer certificate (`certs peer`, `--peer-cert`); [`serve`] accepts
//! only peer certificates of the agent CA, never an agent's
//! ([`certs::is_peer_certificate`]).
//! Decisions live in [`decide`], the wire format in [`wire`].

pub mod decide;
pub mod serve;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use proto::DialTarget;
use rustls::pki_types::ServerName;
use tokio::task::JoinSet;
use transport::mux::{MuxRole, PeerInfo};
use transport::{TunnelConnection, TunnelRecv, TunnelSend};

use crate::dial::{DialFailure, Frontend};
use crate::metrics::ServerMetrics;
use decide::{RouteCache, FOUND};
use wire::{Answer, Op, Request};

/// ALPN of a replica-to-replica connection on the agent port (TCP).
pub const ALPN_PEER: &[u8] = b"edgetunnel-peer/1";
/// How long all peers together may take to answer a lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long reaching a peer (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a positive lookup is trusted.
const ROUTE_TTL: Duration = Duration::from_secs(5);

/// The files this replica shows its peers and checks them with.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// `--peer-cert` / `--peer-key` (`certs peer`), shown to the peer.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `--agent-ca`: signs the peers' server and peer certificates.
    pub ca: PathBuf,
    /// The name a peer's server certificate is checked against: this
    /// replica's own certificate's (replicas normally share one); `None`:
    /// the `--peer` HOST.
    pub server_name: Option<String>,
}

/// One peer address and the name its certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerAddr {
    addr: SocketAddr,
    /// The `--peer` HOST.
    name: String,
}

/// Why a peer could not be asked.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Wire(#[from] wire::WireError),
}

impl PeerError {
    fn reason(&self) -> &'static str {
        match self {
            PeerError::Connect(_) => "connect",
            PeerError::Tls(_) => "tls",
            PeerError::Timeout(_) => "timeout",
            PeerError::Wire(_) => "stream",
        }
    }
}

/// The other replicas, as this one reaches them.
pub struct Peers {
    me: decide::Replica,
    names: Vec<(String, u16)>,
    agent_addr: SocketAddr,
    tls: PeerTls,
    metrics: ServerMetrics,
    addrs: RwLock<Vec<PeerAddr>>,
    conns: Mutex<HashMap<SocketAddr, TunnelConnection>>,
    cache: Mutex<RouteCache>,
}

/// A stream a peer dialed for us.
pub struct PeerStream {
    pub send: TunnelSend,
    pub recv: TunnelRecv,
    /// `--server-id` of the replica carrying it.
    pub server_id: String,
}

impl Peers {
    /// Peers from `--peer HOST:PORT` flags (resolved by [`Peers::refresh`]).
    pub fn new(
        me: decide::Replica,
        peers: &[String],
        agent_addr: SocketAddr,
        tls: PeerTls,
        metrics: ServerMetrics,
    ) -> Self {
        let names = peers
            .iter()
            .filter_map(|p| {
                let (h, port) = p.rsplit_once(':')?;
                let h = h.trim_start_matches('[').trim_end_matches(']');
                Some((h.to_string(), port.parse().ok()?))
            })
            .collect();
        Self {
            me,
            names,
            agent_addr,
            tls,
            metrics,
            addrs: RwLock::default(),
            conns: Mutex::default(),
            cache: Mutex::new(RouteCache::new(ROUTE_TTL)),
        }
    }

    /// Resolves every `--peer` again; this replica's own address is skipped,
    /// connections to vanished addresses are closed. A name that fails to
    /// resolve keeps its addresses.
    pub async fn refresh(&self) {
        let mut found = Vec::new();
        for (host, port) in &self.names {
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                Ok(Ok(addrs)) => found.extend(addrs.map(|addr| PeerAddr {
                    addr,
                    name: host.clone(),
                })),
                Ok(Err(e)) => {
                    tracing::warn!(peer = %host, error = %e, "cannot resolve --peer; keeping its addresses");
                    found.extend(self.current().into_iter().filter(|p| &p.name == host));
                }
                Err(_) => {
                    tracing::warn!(peer = %host, "resolving --peer timed out; keeping its addresses");
                    found.extend(self.current().into_iter().filter(|p| &p.name == host));
                }
            }
        }
        found.retain(|p| !decide::is_own(p.addr, self.agent_addr, is_local_ip));
        found.sort_by_key(|p| p.addr);
        found.dedup_by_key(|p| p.addr);
        let keep: Vec<SocketAddr> = found.iter().map(|p| p.addr).collect();
        if self.current() != found {
            tracing::info!(peers = ?keep, "peer replicas");
        }
        self.lock_conns().retain(|addr, conn| {
            let kept = keep.contains(addr);
            if !kept {
                conn.close(proto::codes::CONN_SHUTDOWN, "peer address vanished");
            }
            kept
        });
        *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = found;
    }

    /// Re-resolves every `interval`, forever.
    pub async fn run_refresh(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.refresh().await;
        }
    }

    fn current(&self) -> Vec<PeerAddr> {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, TunnelConnection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, RouteCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Dials `target` (routed to `node` when given) through the peer that
    /// has its agent, waiting at most `limit` for the peer's answer.
    pub async fn dial(
        self: &Arc<Self>,
        node: Option<&str>,
        target: &DialTarget,
        frontend: Frontend,
        limit: Duration,
    ) -> Result<PeerStream, DialFailure> {
        let key = decide::route_key(node, target);
        let request = |op| Request {
            op,
            node: node.map(str::to_owned),
            target: target.to_string(),
            frontend: frontend.as_str().to_owned(),
        };
        let cached = self.lock_cache().get(&key, Instant::now());
        let cached = cached.and_then(|addr| self.current().into_iter().find(|p| p.addr == addr));
        let peer = match cached {
            Some(p) => p,
            None => self
                .lookup(request(Op::Lookup))
                .await
                .ok_or_else(|| DialFailure::NoAgent {
                    host: node.map_or_else(|| target.host_string(), str::to_owned),
                })?,
        };
        let result = self.exchange(&peer, &request(Op::Dial), limit).await;
        let label = match &result {
            Ok((a, ..)) => decide::failure_of(a).map_or("ok", |f| f.result_label()),
            Err(_) => "peer_failed",
        };
        self.metrics
            .peer_dials
            .with_label_values(&[peer.addr.to_string().as_str(), label])
            .inc();
        match result {
            Ok((answer, send, recv)) if answer.status == FOUND => {
                self.lock_cache().put(key, peer.addr, Instant::now());
                Ok(PeerStream {
                    send,
                    recv,
                    server_id: answer.server_id,
                })
            }
            Ok((answer, ..)) => {
                if decide::is_not_here(&answer) {
                    // The node left that peer since; the next dial looks again.
                    self.lock_cache().forget(&key, peer.addr);
                }
                Err(decide::failure_of(&answer).unwrap_or(DialFailure::NoAgent { host: key }))
            }
            Err(e) => {
                self.lock_cache().forget(&key, peer.addr);
                self.failed(peer.addr, &e);
                Err(DialFailure::Peer {
                    server_id: peer.addr.to_string(),
                    status: 502,
                    label: "peer_failed",
                    message: format!("peer replica {} failed the dial: {e}", peer.addr),
                })
            }
        }
    }

    /// Whether `node` / `target` is reachable through some peer, asking all
    /// of them at once; the first that has it.
    async fn lookup(self: &Arc<Self>, request: Request) -> Option<PeerAddr> {
        let mut asks = JoinSet::new();
        for peer in self.current() {
            let this = self.clone();
            let request = request.clone();
            asks.spawn(async move {
                let answer = this.exchange(&peer, &request, LOOKUP_TIMEOUT).await;
                (peer, answer)
            });
        }
        let deadline = tokio::time::Instant::now() + LOOKUP_TIMEOUT;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, asks.join_next()).await {
            let Ok((peer, answer)) = joined else { continue };
            match answer {
                Ok((a, ..)) if a.instance == self.me.instance => {
                    tracing::debug!(peer = %peer.addr, "that peer address is this replica");
                }
                Ok((a, ..)) if a.status == FOUND => {
                    if a.server_id == self.me.server_id {
                        tracing::warn!(peer = %peer.addr, server_id = %a.server_id,
                            "a peer replica has this replica's --server-id; give each its own");
                    }
                    return Some(peer);
                }
                Ok(_) => {}
                Err(e) => self.failed(peer.addr, &e),
            }
        }
        None
    }

    fn failed(&self, peer: SocketAddr, e: &PeerError) {
        self.metrics
            .peer_failures
            .with_label_values(&[peer.to_string().as_str(), e.reason()])
            .inc();
        tracing::info!(peer = %peer, error = %e, "peer replica could not be asked");
    }

    /// Sends `request` to `peer` on a new stream and reads its answer.
    async fn exchange(
        &self,
        peer: &PeerAddr,
        request: &Request,
        limit: Duration,
    ) -> Result<(Answer, TunnelSend, TunnelRecv), PeerError> {
        let attempt = async {
            let (mut send, mut recv) = self.open(peer).await?;
            wire::write(&mut send, request).await?;
            let answer: Answer = wire::read(&mut recv).await?;
            Ok::<_, PeerError>((answer, send, recv))
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| PeerError::Timeout(limit))?
    }

    /// A stream to `peer`, on its connection (made, or made again, here).
    async fn open(&self, peer: &PeerAddr) -> Result<(TunnelSend, TunnelRecv), PeerError> {
        let existing = self.lock_conns().get(&peer.addr).cloned();
        if let Some(conn) = existing {
            match conn.open_stream().await {
                Ok(halves) => return Ok(halves),
                Err(_) => {
                    self.lock_conns().remove(&peer.addr);
                }
            }
        }
        let conn = self.connect(peer).await?;
        self.lock_conns().insert(peer.addr, conn.clone());
        conn.open_stream()
            .await
            .map_err(|e| PeerError::Connect(e.to_string()))
    }

    /// TCP, TLS with this replica's peer certificate, then the multiplexer.
    async fn connect(&self, peer: &PeerAddr) -> Result<TunnelConnection, PeerError> {
        let tls_err = |e: certs::CertError| PeerError::Tls(e.to_string());
        let config = certs::agent_client_config(
            certs::load_root_store(&self.tls.ca).map_err(tls_err)?,
            certs::load_cert_chain(&self.tls.cert).map_err(tls_err)?,
            certs::load_private_key(&self.tls.key).map_err(tls_err)?,
            vec![ALPN_PEER.to_vec()],
        )
        .map_err(tls_err)?;
        let name = self
            .tls
            .server_name
            .clone()
            .unwrap_or_else(|| peer.name.clone());
        let name = ServerName::try_from(name.clone())
            .map_err(|e| PeerError::Tls(format!("server name {name:?}: {e}")))?;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(peer.addr)
                .await
                .map_err(|e| PeerError::Connect(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            transport::socket::set_tcp_keepalive(&tcp);
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| PeerError::Tls(e.to_string()))
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| PeerError::Timeout(CONNECT_TIMEOUT))??;
        Ok(TunnelConnection::Ws {
            mux: transport::mux::spawn(tls, MuxRole::Client, transport::mux::Frames::Peer),
            peer: PeerInfo {
                remote: peer.addr,
                certificates: None,
            },
        })
    }
}

/// Whether `ip` is an address of this host (binding to it works).
fn is_local_ip(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}
