//! Command line and config file, parsed once into a typed [`ServerConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use proto::DialTarget;
use transport::cli::parse_duration;
use transport::quic::CongestionControl;

use crate::forward::spec::{parse_forward, ForwardSpec};

/// `tunnel-server`: the cloud end of the edge tunnel.
#[derive(Debug, Parser)]
#[command(
    name = "tunnel-server",
    version,
    about = "Cloud end of the edge tunnel: agents dial in, kube-apiserver and operators reach edge nodes through them.",
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the certificates a cluster needs (PEM files).
    #[command(subcommand)]
    Certs(crate::certs_cmd::CertsCommand),
}

/// Flags of the serving mode (see the spec's tunnel-server table).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// YAML file whose keys are these flags' long names; command-line flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Agents connect here: QUIC on UDP (and WebSocket on TCP, same port).
    #[arg(long, default_value = "0.0.0.0:8132")]
    pub agent_addr: SocketAddr,
    /// Front end for kube-apiserver on a Unix socket (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub uds: Option<PathBuf>,
    /// The same front end on TCP with mutual TLS.
    #[arg(long, value_name = "ADDR")]
    pub proxy_addr: Option<SocketAddr>,
    /// Plain-HTTP proxy for Prometheus-style clients (absolute-URI requests and CONNECT); bind to a private address.
    #[arg(long, value_name = "ADDR")]
    pub http_proxy_addr: Option<SocketAddr>,
    /// Admin endpoints: /metrics, /healthz, /readyz, /agents, /sd.
    #[arg(long, default_value = "127.0.0.1:8133")]
    pub admin_addr: SocketAddr,
    /// Port of each /sd target (repeatable: one target per port and node).
    #[arg(long = "sd-port", value_name = "PORT", default_value = "10250",
        value_parser = clap::value_parser!(u16).range(1..))]
    pub sd_ports: Vec<u16>,
    /// A cloud TCP port whose connections NODE's agent carries to HOST:PORT
    /// (repeatable; re-read from the config file and command line on SIGHUP).
    #[arg(long = "forward", value_name = "LISTEN=NODE/HOST:PORT", value_parser = parse_forward)]
    pub forwards: Vec<ForwardSpec>,
    /// Export byte and stream series per node (`--per-node-metrics=false` for very large fleets).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub per_node_metrics: bool,
    /// Most nodes with per-node series at once; nodes connecting beyond it
    /// get none (counted in tunnel_server_per_node_metrics_omitted_nodes).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub per_node_metrics_max_nodes: usize,
    /// Certificate shown to agents and on --proxy-addr.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA that signs agent certificates.
    #[arg(long, value_name = "FILE")]
    pub agent_ca: Option<PathBuf>,
    /// Bootstrap tokens accepted for enrollment (hashed; see `certs token create`).
    #[arg(long, value_name = "DIR")]
    pub token_dir: Option<PathBuf>,
    /// Private key of --agent-ca: lets the server sign enrolled and renewed agent certificates.
    #[arg(long, value_name = "FILE")]
    pub agent_ca_key: Option<PathBuf>,
    /// Lifetime of agent certificates the server issues (agents renew after 2/3 of it).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub agent_cert_ttl: Duration,
    /// Deny list of revoked nodes (`certs revoke`), reloaded when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub revocation_file: Option<PathBuf>,
    /// CA for client certificates on --proxy-addr.
    #[arg(long, value_name = "FILE")]
    pub proxy_client_ca: Option<PathBuf>,
    /// Common names allowed to use --proxy-addr (repeatable; default: any certificate the CA signed).
    #[arg(long = "proxy-client-name", value_name = "CN")]
    pub proxy_client_names: Vec<String>,
    /// How long a front-end request waits for the agent's dial result.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Most tunneled streams at once (beyond: 503).
    #[arg(long, default_value_t = 20_000)]
    pub max_streams: usize,
    /// Most dials waiting for an agent's answer at once (beyond: 503).
    #[arg(long, default_value_t = 2_000)]
    pub max_pending_dials: usize,
    /// Most streams open or dialing on one agent's connection (beyond: 503).
    #[arg(long, default_value_t = 20_000)]
    pub max_streams_per_node: usize,
    /// A front-end client must finish its request header within this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// QUIC keep-alive interval towards agents. Agents ping every 10 s by
    /// default (they hold the NAT bindings) and every packet from an agent
    /// restarts this timer, so the server's own ping only matters for agents
    /// that ping less often.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub agent_keepalive: Duration,
    /// Congestion controller for what the server sends to agents over QUIC
    /// (cloud→edge: exec input, port-forward, kubectl cp): loss-tolerant, cubic, newreno or bbr.
    #[arg(
        long,
        default_value = "loss-tolerant",
        value_name = "loss-tolerant|cubic|newreno|bbr"
    )]
    pub congestion_control: CongestionControl,
    /// Silence after which an agent connection is declared dead (the lower
    /// of this and the agent's `--idle-timeout` applies).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub agent_idle_timeout: Duration,
    /// Where agents' node-proxy traffic goes when an agent runs with
    /// `--apiserver tunnel` (edge→cloud streams over its own connection).
    #[arg(long, value_name = "HOST:PORT")]
    pub apiserver: Option<DialTarget>,
    #[command(flatten)]
    pub passthrough: PassthroughArgs,
    #[command(flatten)]
    pub hardening: HardeningArgs,
    #[command(flatten)]
    pub replicas: ReplicaArgs,
    #[command(flatten)]
    pub controllers: ControllerArgs,
}

/// Flags of the Kubernetes controllers the server can run (docs/operations.md, "Pods on
/// autonomous nodes are not evicted" and "Approving the hub's serving certificates").
#[derive(Debug, Args, Clone)]
pub struct ControllerArgs {
    /// Give pods on nodes annotated edgetunnel.io/autonomy-duration tolerations of that
    /// duration for the unreachable and not-ready taints, so they are not evicted offline.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL",
        num_args = 0..=1, default_missing_value = "true")]
    pub autonomy_controller: bool,
    /// Approve the kubelet-serving CSRs agents make for their HTTPS node-proxy listener
    /// (node identity, IP SANs in --hub-csr-ips, serving usages; nothing else).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL",
        num_args = 0..=1, default_missing_value = "true")]
    pub approve_hub_csrs: bool,
    /// The IP SANs a hub serving CSR may ask for: the agents' --hub-https-addr addresses
    /// (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "169.254.2.1",
        value_name = "IP,..."
    )]
    pub hub_csr_ips: Vec<IpAddr>,
    /// kubeconfig the controllers reach kube-apiserver with (default: the pod's
    /// in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// The validated [`ControllerArgs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControllerConfig {
    pub autonomy: bool,
    /// Set with `--approve-hub-csrs`: the IP SANs approved.
    pub hub_csr_ips: Option<Vec<IpAddr>>,
    /// `None`: in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
}

impl ControllerConfig {
    /// Whether any controller runs (and so a kube client is needed).
    pub fn any(&self) -> bool {
        self.autonomy || self.hub_csr_ips.is_some()
    }
}

impl TryFrom<ControllerArgs> for ControllerConfig {
    type Error = ConfigError;

    fn try_from(a: ControllerArgs) -> Result<Self, Self::Error> {
        if a.approve_hub_csrs && a.hub_csr_ips.is_empty() {
            return Err(ConfigError::Missing("hub-csr-ips"));
        }
        Ok(Self {
            autonomy: a.autonomy_controller,
            hub_csr_ips: a.approve_hub_csrs.then_some(a.hub_csr_ips),
            kubeconfig: a.kubeconfig,
        })
    }
}

/// Flags of a server running as one of several replicas (docs/operations.md,
/// "Several replicas").
#[derive(Debug, Args, Clone)]
pub struct ReplicaArgs {
    /// This replica's name in /agents, logs and metrics (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub server_id: Option<String>,
    /// Another replica's agent port (repeatable; every address HOST resolves
    /// to is one peer, this replica's own skipped): requests for nodes not
    /// connected here are carried through the peer that has them.
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Client certificate shown to peers (`certs peer` writes peer.crt); required with --peer.
    #[arg(long, value_name = "FILE")]
    pub peer_cert: Option<PathBuf>,
    /// Key of --peer-cert.
    #[arg(long, value_name = "FILE")]
    pub peer_key: Option<PathBuf>,
    /// How often --peer names are resolved again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub peer_resolve_interval: Duration,
    /// On SIGTERM: how long open streams may run before the process exits.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// The validated [`ReplicaArgs`].
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub server_id: String,
    pub peers: Vec<String>,
    /// `--peer-cert` and `--peer-key`; set whenever `peers` is not empty.
    pub peer_cert: Option<(PathBuf, PathBuf)>,
    pub peer_resolve_interval: Duration,
    pub drain_timeout: Duration,
}

impl TryFrom<ReplicaArgs> for ReplicaConfig {
    type Error = ConfigError;

    fn try_from(a: ReplicaArgs) -> Result<Self, Self::Error> {
        let server_id = match a.server_id {
            Some(id) if id.trim().is_empty() || id.chars().any(char::is_control) => {
                return Err(ConfigError::BadServerId(id))
            }
            Some(id) => id,
            None => hostname().unwrap_or_else(|| "tunnel-server".to_string()),
        };
        for p in &a.peers {
            if !p
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0))
            {
                return Err(ConfigError::BadPeer(p.clone()));
            }
        }
        let peer_cert = match (a.peer_cert, a.peer_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) if a.peers.is_empty() => None,
            (_, None) => return Err(ConfigError::Missing("peer-key")),
            (None, Some(_)) => return Err(ConfigError::Missing("peer-cert")),
        };
        if a.peer_resolve_interval < Duration::from_secs(1) {
            return Err(ConfigError::Zero("peer-resolve-interval (at least 1s)"));
        }
        Ok(Self {
            server_id,
            peers: a.peers,
            peer_resolve_interval: a.peer_resolve_interval,
            peer_cert,
            drain_timeout: a.drain_timeout,
        })
    }
}

/// The kernel hostname: the default `--server-id`.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Flags of the front ends for clients that dial nodes directly (SNI
/// passthrough, DNS hosts file, transparent redirect).
#[derive(Debug, Args)]
pub struct PassthroughArgs {
    /// TLS passthrough by server name: `https://<node>:10250` is carried untouched to that node's kubelet.
    #[arg(long, value_name = "ADDR")]
    pub kubelet_addr: Option<SocketAddr>,
    /// Port dialed on the node for --kubelet-addr connections.
    #[arg(long, default_value_t = 10250, value_parser = clap::value_parser!(u16).range(1..))]
    pub kubelet_port: u16,
    /// Server names `<node>.<DOMAIN>` also route to `<node>` (and are listed in --dns-hosts-file).
    #[arg(long, value_name = "DOMAIN")]
    pub node_domain: Option<String>,
    /// Hosts file of the connected nodes for CoreDNS's `hosts` plugin (rewritten atomically as agents come and go).
    #[arg(long, value_name = "PATH", requires = "dns_address")]
    pub dns_hosts_file: Option<PathBuf>,
    /// The address node names resolve to in --dns-hosts-file (where clients reach --kubelet-addr).
    #[arg(long, value_name = "IP")]
    pub dns_address: Option<IpAddr>,
    /// Connections redirected here by an iptables/nftables REDIRECT go to the node owning their original destination IP.
    #[arg(long, value_name = "ADDR")]
    pub transparent_addr: Option<SocketAddr>,
}

/// The validated [`PassthroughArgs`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassthroughConfig {
    pub kubelet_addr: Option<SocketAddr>,
    pub kubelet_port: u16,
    /// Lower-case, without leading or trailing dots.
    pub node_domain: Option<String>,
    pub hosts_file: Option<crate::hosts_file::HostsFile>,
    pub transparent_addr: Option<SocketAddr>,
}

impl TryFrom<PassthroughArgs> for PassthroughConfig {
    type Error = ConfigError;

    fn try_from(a: PassthroughArgs) -> Result<Self, Self::Error> {
        let node_domain = match a.node_domain {
            None => None,
            Some(d) => {
                let d = d.trim_matches('.').to_ascii_lowercase();
                match d.parse::<proto::Host>() {
                    Ok(proto::Host::Name(n)) => Some(n),
                    _ => return Err(ConfigError::BadNodeDomain(d)),
                }
            }
        };
        let hosts_file = match (a.dns_hosts_file, a.dns_address) {
            (Some(path), Some(address)) => Some(crate::hosts_file::HostsFile {
                path,
                address,
                node_domain: node_domain.clone(),
            }),
            (Some(_), None) => return Err(ConfigError::Missing("dns-address")),
            (None, _) => None,
        };
        Ok(Self {
            kubelet_addr: a.kubelet_addr,
            kubelet_port: a.kubelet_port,
            node_domain,
            hosts_file,
            transparent_addr: a.transparent_addr,
        })
    }
}

/// Quotas and limits that keep anonymous or shared listeners from starving
/// kube-apiserver (docs/operations.md, "Limits").
#[derive(Debug, Args, Clone)]
pub struct HardeningArgs {
    /// Most streams all --forward listeners hold at once (beyond: the client is closed).
    /// Default: a quarter of --max-streams.
    #[arg(long, value_name = "N")]
    pub max_streams_forward: Option<usize>,
    /// Most streams --http-proxy-addr holds at once (beyond: 503).
    /// Default: a quarter of --max-streams.
    #[arg(long, value_name = "N")]
    pub max_streams_http_proxy: Option<usize>,
    /// Most open client connections on each front-end listener (--uds,
    /// --proxy-addr, --http-proxy-addr, each --forward); beyond: 503 or close.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_connections_per_listener: usize,
    /// A tunneled stream with no byte in either direction for this long is
    /// reset (0s: never). Matches kubelet's --streaming-connection-idle-timeout.
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    pub stream_idle_timeout: Duration,
    /// How long an --http-proxy-addr client connection may sit idle between
    /// requests (Prometheus reuses its connection every scrape interval).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub http_proxy_idle_timeout: Duration,
    /// Enrollment attempts allowed per source IP per minute (beyond: 429 with Retry-After).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub enroll_attempts_per_minute: u32,
    /// Most agent connections between first packet and registration at once;
    /// beyond, new ones are refused at once (QUIC CONNECTION_REFUSED, TCP closed).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_pending_handshakes: usize,
}

/// [`HardeningArgs`], validated, with defaults resolved.
#[derive(Debug, Clone)]
pub struct Hardening {
    pub max_streams_forward: usize,
    pub max_streams_http_proxy: usize,
    pub max_connections_per_listener: usize,
    pub stream_idle_timeout: Option<Duration>,
    pub http_proxy_idle_timeout: Duration,
    pub enroll_attempts_per_minute: u32,
    pub max_pending_handshakes: usize,
}

impl HardeningArgs {
    /// Resolves the shares against `max_streams`; explicit shares must leave
    /// kube-apiserver (CONNECT and gRPC) at least one stream of its own.
    fn resolve(self, max_streams: usize) -> Result<Hardening, ConfigError> {
        let quarter = (max_streams / 4).max(1);
        let forward = self.max_streams_forward.unwrap_or(quarter);
        let http = self.max_streams_http_proxy.unwrap_or(quarter);
        for (v, flag) in [
            (forward, "max-streams-forward"),
            (http, "max-streams-http-proxy"),
            (
                self.max_connections_per_listener,
                "max-connections-per-listener",
            ),
            (
                self.enroll_attempts_per_minute as usize,
                "enroll-attempts-per-minute",
            ),
            (self.max_pending_handshakes, "max-pending-handshakes"),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(flag));
            }
        }
        let explicit = self.max_streams_forward.is_some() || self.max_streams_http_proxy.is_some();
        // Defaults never fail (a tiny --max-streams just gets shares of 1).
        if explicit && forward.saturating_add(http) >= max_streams {
            return Err(ConfigError::SharesLeaveNothing {
                forward,
                http,
                max_streams,
            });
        }
        if self.http_proxy_idle_timeout.is_zero() {
            return Err(ConfigError::Zero("http-proxy-idle-timeout"));
        }
        Ok(Hardening {
            max_streams_forward: forward,
            max_streams_http_proxy: http,
            max_connections_per_listener: self.max_connections_per_listener,
            stream_idle_timeout: Some(self.stream_idle_timeout).filter(|d| !d.is_zero()),
            http_proxy_idle_timeout: self.http_proxy_idle_timeout,
            enroll_attempts_per_minute: self.enroll_attempts_per_minute,
            max_pending_handshakes: self.max_pending_handshakes,
        })
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub agent_addr: SocketAddr,
    pub uds: Option<PathBuf>,
    pub proxy_addr: Option<SocketAddr>,
    pub http_proxy_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub sd_ports: Vec<u16>,
    pub forwards: Vec<ForwardSpec>,
    pub per_node_metrics: bool,
    pub per_node_metrics_max_nodes: usize,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub agent_ca: PathBuf,
    pub proxy_client_ca: Option<PathBuf>,
    pub proxy_client_names: Vec<String>,
    pub token_dir: Option<PathBuf>,
    pub agent_ca_key: Option<PathBuf>,
    pub agent_cert_ttl: Duration,
    pub revocation_file: Option<PathBuf>,
    pub dial_timeout: Duration,
    pub max_streams: usize,
    pub max_pending_dials: usize,
    pub max_streams_per_node: usize,
    pub header_timeout: Duration,
    pub agent_keepalive: Duration,
    pub agent_idle_timeout: Duration,
    pub congestion_control: CongestionControl,
    pub apiserver: Option<DialTarget>,
    pub passthrough: PassthroughConfig,
    pub hardening: Hardening,
    pub replicas: ReplicaConfig,
    pub controllers: ControllerConfig,
}

/// Highest `--max-streams-per-node`: agents grant 25,000 concurrent QUIC
/// streams (`transport::quic::AGENT_STREAM_CREDIT`; yamux allows 65,536); the
/// margin covers streams the server counts as closed while the agent has not
/// yet seen them close.
pub const MAX_STREAMS_PER_NODE: usize = 24_000;

/// A required flag is missing or flags contradict each other.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{0} is required")]
    Missing(&'static str),
    #[error("--max-streams-per-node {0} is above {MAX_STREAMS_PER_NODE}, the QUIC stream credit agents grant (25000) less a margin for streams still closing")]
    StreamsPerNode(usize),
    #[error("--proxy-client-ca is required with --proxy-addr")]
    ProxyNeedsClientCa,
    #[error(
        "--agent-keepalive ({keepalive:?}) must be shorter than --agent-idle-timeout ({idle:?})"
    )]
    KeepaliveTooLong { keepalive: Duration, idle: Duration },
    #[error("--{0} must be greater than 0")]
    Zero(&'static str),
    #[error("--agent-ca-key is required with --token-dir (enrollment signs certificates)")]
    TokenDirNeedsCaKey,
    #[error("two --forward flags listen on {0}")]
    DuplicateForwardListen(SocketAddr),
    #[error("--server-id {0:?} must be a non-empty name without control characters")]
    BadServerId(String),
    #[error("--peer {0:?} must be HOST:PORT")]
    BadPeer(String),
    #[error("--node-domain {0:?} is not a DNS name")]
    BadNodeDomain(String),
    #[error("--max-streams-forward ({forward}) + --max-streams-http-proxy ({http}) must be less than --max-streams ({max_streams}), so kube-apiserver keeps streams of its own")]
    SharesLeaveNothing {
        forward: usize,
        http: usize,
        max_streams: usize,
    },
}

impl TryFrom<RunArgs> for ServerConfig {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<Self, Self::Error> {
        if a.proxy_addr.is_some() && a.proxy_client_ca.is_none() {
            return Err(ConfigError::ProxyNeedsClientCa);
        }
        if a.agent_keepalive >= a.agent_idle_timeout {
            return Err(ConfigError::KeepaliveTooLong {
                keepalive: a.agent_keepalive,
                idle: a.agent_idle_timeout,
            });
        }
        if a.token_dir.is_some() && a.agent_ca_key.is_none() {
            return Err(ConfigError::TokenDirNeedsCaKey);
        }
        if a.agent_cert_ttl.is_zero() {
            return Err(ConfigError::Zero("agent-cert-ttl"));
        }
        if a.max_streams == 0 {
            return Err(ConfigError::Zero("max-streams"));
        }
        if a.max_pending_dials == 0 {
            return Err(ConfigError::Zero("max-pending-dials"));
        }
        if a.max_streams_per_node == 0 {
            return Err(ConfigError::Zero("max-streams-per-node"));
        }
        if a.max_streams_per_node > MAX_STREAMS_PER_NODE {
            return Err(ConfigError::StreamsPerNode(a.max_streams_per_node));
        }
        let hardening = a.hardening.resolve(a.max_streams)?;
        let mut listens = std::collections::HashSet::new();
        for f in &a.forwards {
            if f.listen.port() != 0 && !listens.insert(f.listen) {
                return Err(ConfigError::DuplicateForwardListen(f.listen));
            }
        }
        Ok(ServerConfig {
            agent_addr: a.agent_addr,
            uds: a.uds,
            proxy_addr: a.proxy_addr,
            http_proxy_addr: a.http_proxy_addr,
            admin_addr: a.admin_addr,
            sd_ports: a.sd_ports,
            forwards: a.forwards,
            per_node_metrics: a.per_node_metrics,
            per_node_metrics_max_nodes: a.per_node_metrics_max_nodes,
            tls_cert: a.tls_cert.ok_or(ConfigError::Missing("tls-cert"))?,
            tls_key: a.tls_key.ok_or(ConfigError::Missing("tls-key"))?,
            agent_ca: a.agent_ca.ok_or(ConfigError::Missing("agent-ca"))?,
            proxy_client_ca: a.proxy_client_ca,
            proxy_client_names: a.proxy_client_names,
            token_dir: a.token_dir,
            agent_ca_key: a.agent_ca_key,
            agent_cert_ttl: a.agent_cert_ttl,
            revocation_file: a.revocation_file,
            dial_timeout: a.dial_timeout,
            max_streams: a.max_streams,
            max_pending_dials: a.max_pending_dials,
            max_streams_per_node: a.max_streams_per_node,
            header_timeout: a.header_timeout,
            agent_keepalive: a.agent_keepalive,
            agent_idle_timeout: a.agent_idle_timeout,
            congestion_control: a.congestion_control,
            apiserver: a.apiserver,
            passthrough: a.passthrough.try_into()?,
            hardening,
            replicas: a.replicas.try_into()?,
            controllers: a.controllers.try_into()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("tunnel-server").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        ServerConfig::try_from(cli.run).map_err(|e| e.to_string())
    }

    const BASE: &[&str] = &[
        "--tls-cert",
        "s.crt",
        "--tls-key",
        "s.key",
        "--agent-ca",
        "ca.crt",
    ];

    #[test]
    fn replica_flags() {
        let c = parse(BASE).unwrap();
        assert_eq!(
            Some(c.replicas.server_id.clone()),
            hostname().or(Some("tunnel-server".into()))
        );
        assert!(c.replicas.peers.is_empty());
        assert_eq!(c.replicas.drain_timeout, Duration::from_secs(60));
        let mut a = BASE.to_vec();
        a.extend([
            "--server-id",
            "r1",
            "--peer",
            "tunnel-peers:8132",
            "--peer",
            "[fd00::2]:8132",
        ]);
        assert_eq!(parse(&a).unwrap_err(), "--peer-key is required");
        a.extend([
            "--peer-cert",
            "p.crt",
            "--peer-key",
            "p.key",
            "--drain-timeout",
            "5s",
        ]);
        let c = parse(&a).unwrap();
        assert_eq!(c.replicas.server_id, "r1");
        assert_eq!(c.replicas.peers, ["tunnel-peers:8132", "[fd00::2]:8132"]);
        assert_eq!(c.replicas.drain_timeout, Duration::from_secs(5));
        let mut a = BASE.to_vec();
        a.extend(["--peer", "nope"]);
        assert!(parse(&a).unwrap_err().contains("HOST:PORT"));
        let mut a = BASE.to_vec();
        a.extend(["--server-id", " "]);
        assert!(parse(&a).unwrap_err().contains("--server-id"));
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.agent_addr, "0.0.0.0:8132".parse().unwrap());
        assert_eq!(c.admin_addr, "127.0.0.1:8133".parse().unwrap());
        assert_eq!(c.dial_timeout, Duration::from_secs(10));
        assert!(c.uds.is_none() && c.proxy_addr.is_none());
        assert!(c.http_proxy_addr.is_none() && c.forwards.is_empty());
        assert_eq!(c.sd_ports, vec![10250]);
        assert!(c.per_node_metrics);
        assert_eq!(c.agent_keepalive, Duration::from_secs(20));
        assert_eq!(c.agent_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.congestion_control, CongestionControl::LossTolerant);
        let mut a = BASE.to_vec();
        a.push("--congestion-control=newreno");
        assert_eq!(
            parse(&a).unwrap().congestion_control,
            CongestionControl::NewReno
        );
    }

    #[test]
    fn prometheus_and_forward_flags() {
        let mut a = BASE.to_vec();
        a.extend([
            "--http-proxy-addr=127.0.0.1:8135",
            "--sd-port=9100",
            "--sd-port=10250",
            "--forward=9000=edge-1/127.0.0.1:22",
            "--forward=9001=edge-2/10.0.0.5:80",
            "--per-node-metrics=false",
        ]);
        let c = parse(&a).unwrap();
        assert_eq!(c.http_proxy_addr, Some("127.0.0.1:8135".parse().unwrap()));
        assert_eq!(c.sd_ports, vec![9100, 10250]);
        assert_eq!(c.forwards.len(), 2);
        assert_eq!(c.forwards[1].node, "edge-2");
        assert!(!c.per_node_metrics);

        let mut a = BASE.to_vec();
        a.extend(["--forward=9000=edge-1"]);
        assert!(parse(&a).unwrap_err().contains("missing '/'"));
        let mut a = BASE.to_vec();
        a.extend(["--forward=9000=a/b:1", "--forward=127.0.0.1:9000=c/d:2"]);
        assert_eq!(
            parse(&a).unwrap_err(),
            "two --forward flags listen on 127.0.0.1:9000"
        );
        let mut a = BASE.to_vec();
        a.extend(["--sd-port=0"]);
        assert!(parse(&a).is_err());
    }

    #[test]
    fn missing_and_contradictory_flags_are_named() {
        assert_eq!(parse(&[]).unwrap_err(), "--tls-cert is required");
        let mut a = BASE.to_vec();
        a.extend(["--proxy-addr", "127.0.0.1:8131"]);
        assert_eq!(
            parse(&a).unwrap_err(),
            "--proxy-client-ca is required with --proxy-addr"
        );
        let mut a = BASE.to_vec();
        a.extend(["--dial-timeout", "10"]);
        assert!(parse(&a).unwrap_err().contains("invalid duration"));
    }

    #[test]
    fn token_dir_needs_the_ca_key() {
        let mut a = BASE.to_vec();
        a.extend(["--token-dir", "t"]);
        assert_eq!(
            parse(&a).unwrap_err(),
            "--agent-ca-key is required with --token-dir (enrollment signs certificates)"
        );
        a.extend(["--agent-ca-key", "ca.key", "--agent-cert-ttl", "30s"]);
        let c = parse(&a).unwrap();
        assert_eq!(c.agent_cert_ttl, Duration::from_secs(30));
        assert_eq!(
            parse(BASE).unwrap().agent_cert_ttl,
            Duration::from_secs(365 * 86400)
        );
    }

    #[test]
    fn passthrough_flags() {
        let c = parse(BASE).unwrap().passthrough;
        assert_eq!(c.kubelet_port, 10250);
        assert!(c.kubelet_addr.is_none() && c.hosts_file.is_none() && c.transparent_addr.is_none());
        let mut a = BASE.to_vec();
        a.extend([
            "--kubelet-addr=0.0.0.0:10250",
            "--kubelet-port=10255",
            "--node-domain=.Nodes.Example.",
            "--dns-hosts-file=/run/edge/hosts",
            "--dns-address=10.96.0.20",
            "--transparent-addr=127.0.0.1:10251",
        ]);
        let c = parse(&a).unwrap().passthrough;
        assert_eq!(c.kubelet_port, 10255);
        assert_eq!(c.node_domain.as_deref(), Some("nodes.example"));
        let h = c.hosts_file.unwrap();
        assert_eq!(h.address, "10.96.0.20".parse::<IpAddr>().unwrap());
        assert_eq!(h.node_domain.as_deref(), Some("nodes.example"));
        assert_eq!(c.transparent_addr, Some("127.0.0.1:10251".parse().unwrap()));

        let mut a = BASE.to_vec();
        a.push("--dns-hosts-file=/run/edge/hosts");
        assert!(parse(&a).unwrap_err().contains("--dns-address"));
        let mut a = BASE.to_vec();
        a.push("--node-domain=bad domain");
        assert_eq!(
            parse(&a).unwrap_err(),
            "--node-domain \"bad domain\" is not a DNS name"
        );
    }

    #[test]
    fn quotas_default_to_quarters_and_must_leave_room_for_the_apiserver() {
        let c = parse(BASE).unwrap().hardening;
        assert_eq!(
            (c.max_streams_forward, c.max_streams_http_proxy),
            (5000, 5000)
        );
        assert_eq!(c.stream_idle_timeout, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(c.http_proxy_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.max_connections_per_listener, 10_000);
        let mut a = BASE.to_vec();
        a.extend(["--max-streams=50", "--stream-idle-timeout=0s"]);
        let c = parse(&a).unwrap().hardening;
        assert_eq!((c.max_streams_forward, c.max_streams_http_proxy), (12, 12));
        assert_eq!(c.stream_idle_timeout, None);
        let mut a = BASE.to_vec();
        a.extend([
            "--max-streams=50",
            "--max-streams-forward=40",
            "--max-streams-http-proxy=10",
        ]);
        assert!(parse(&a)
            .unwrap_err()
            .contains("kube-apiserver keeps streams"));
        let mut a = BASE.to_vec();
        a.extend(["--max-connections-per-listener=0"]);
        assert_eq!(
            parse(&a).unwrap_err(),
            "--max-connections-per-listener must be greater than 0"
        );
    }

    #[test]
    fn controller_flags() {
        let c = parse(BASE).unwrap().controllers;
        assert_eq!(c, ControllerConfig::default());
        assert!(!c.any());
        let mut a = BASE.to_vec();
        a.extend([
            "--autonomy-controller",
            "--approve-hub-csrs=true",
            "--kubeconfig=/etc/k.conf",
        ]);
        let c = parse(&a).unwrap().controllers;
        assert!(c.autonomy && c.any());
        assert_eq!(c.hub_csr_ips, Some(vec!["169.254.2.1".parse().unwrap()]));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/k.conf")));
        let mut a = BASE.to_vec();
        a.extend([
            "--approve-hub-csrs",
            "--hub-csr-ips=169.254.2.1,fd00::1",
            "--autonomy-controller=false",
        ]);
        let c = parse(&a).unwrap().controllers;
        assert!(!c.autonomy);
        assert_eq!(c.hub_csr_ips.map(|v| v.len()), Some(2));
        let mut a = BASE.to_vec();
        a.push("--hub-csr-ips=not-an-ip");
        assert!(parse(&a).unwrap_err().contains("not-an-ip"));
    }

    #[test]
    fn later_flags_override_earlier_ones() {
        let mut a = vec!["--dial-timeout=1s"];
        a.extend(BASE);
        a.push("--dial-timeout=3s");
        assert_eq!(parse(&a).unwrap().dial_timeout, Duration::from_secs(3));
    }
}
