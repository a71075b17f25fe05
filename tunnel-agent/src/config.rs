//! Command line and config file, parsed once into a typed [`AgentConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use node_proxy::settings::{self, HubConfig, HubConfigError, HubSetting, ProbeSettings};
use transport::cli::{parse_bytes, parse_duration};
use transport::quic::CongestionControl;

use crate::allowlist::AllowRule;

/// `tunnel-agent`: the edge end of the tunnel.
#[derive(Debug, Parser)]
#[command(
    name = "tunnel-agent",
    version,
    about = "Edge end of the tunnel: dials out to tunnel-server and dials allowed local destinations for it.",
    args_override_self = true
)]
pub struct Cli {
    /// YAML file whose keys are these flags' long names; command-line flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to dial out (HOST:PORT; HOST is also the TLS server name). Repeatable;
    /// every address HOST resolves to is one server, each kept connected.
    #[arg(long = "server", value_name = "HOST:PORT")]
    pub server: Vec<String>,
    /// How often the --server names are resolved again (new addresses dialed, vanished ones dropped).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub server_resolve_interval: Duration,
    /// Node name; must match the certificate (default: the hostname).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Addresses this agent answers for (default: the IPs in the certificate).
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ips: Vec<IpAddr>,
    /// Transport to the server.
    #[arg(long, value_enum, default_value_t = TransportChoice::Auto)]
    pub transport: TransportChoice,
    /// Agent certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA that signed the server's certificate.
    #[arg(long, value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// Bootstrap token (`<id>.<secret>`): enroll when --tls-cert and --tls-key do not exist yet.
    #[arg(long, value_name = "TOKEN")]
    pub bootstrap_token: Option<String>,
    /// Destinations the server may ask for, HOST:PORT or HOST:PORT-PORT, repeatable
    /// (default: each node IP and 127.0.0.1 at 10250 and 10255).
    #[arg(long = "allow", value_name = "HOST:PORT[-PORT]")]
    pub allow: Vec<AllowRule>,
    /// Admin endpoints: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "127.0.0.1:8134")]
    pub admin_addr: SocketAddr,
    /// How long the agent tries to connect to a destination before reporting a timeout.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// How long one attempt to reach the server may take.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// HTTP proxy for the WebSocket transport (default: HTTPS_PROXY unless NO_PROXY matches).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// While on WebSocket with --transport auto, how often to try QUIC again (jittered).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub quic_probe_interval: Duration,
    /// QUIC keep-alive interval: holds NAT bindings open (common UDP NAT
    /// timeouts are 30 s and more) and notices a restarted server.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub keepalive: Duration,
    /// Congestion controller for what the agent sends over QUIC (edge→cloud:
    /// logs, exec output, metrics): loss-tolerant, cubic, newreno or bbr.
    #[arg(
        long,
        default_value = "loss-tolerant",
        value_name = "loss-tolerant|cubic|newreno|bbr"
    )]
    pub congestion_control: CongestionControl,
    /// Silence after which the server connection is declared dead (three
    /// keep-alives, each retransmitted by QUIC when lost).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Node proxy listener for kubelet and friends (plain HTTP; `off` disables it).
    #[arg(long, default_value = "127.0.0.1:10261", value_name = "ADDR|off")]
    pub hub_addr: String,
    /// HTTPS node-proxy listener for pods (`off`: none): their service-account
    /// tokens pass through; --hub-filter-masterservice points kubelet's
    /// `default/kubernetes` Service at this address. The address must be on
    /// an interface of the node.
    #[arg(long, default_value = "169.254.2.1:10268", value_name = "ADDR|off")]
    pub hub_https_addr: String,
    /// Serving certificate of --hub-https-addr (with --hub-serving-key),
    /// reloaded when it changes; without both, one is requested through the
    /// CertificateSigningRequest API (signer kubernetes.io/kubelet-serving).
    #[arg(long, value_name = "FILE")]
    pub hub_serving_cert: Option<PathBuf>,
    /// Key of --hub-serving-cert.
    #[arg(long, value_name = "FILE")]
    pub hub_serving_key: Option<PathBuf>,
    /// Create a dummy interface NAME holding --hub-https-addr's address
    /// (/32 or /128) before listening, as YurtHub does; idempotent; needs
    /// CAP_NET_ADMIN.
    #[arg(long, value_name = "NAME")]
    pub hub_interface: Option<String>,
    /// Show kubelet the `default/kubernetes` Service, Endpoints and EndpointSlice
    /// at --hub-https-addr, so pods' in-cluster config leads to the node proxy
    /// (default: true unless --hub-https-addr is off; turned off at run time
    /// when the HTTPS listener cannot bind).
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub hub_filter_masterservice: Option<bool>,
    /// kube-proxy and CoreDNS see only this pool's endpoints of Services
    /// labelled `edgetunnel.io/topology=pool`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub hub_filter_topology: bool,
    /// Node label naming a node's pool for service topology.
    #[arg(
        long,
        default_value = "topology.kubernetes.io/zone",
        value_name = "KEY"
    )]
    pub pool_label: String,
    /// Upstream of the node proxy: https://HOST[:PORT], or `tunnel`. Without it the hub does not run.
    #[arg(long, value_name = "URL|tunnel")]
    pub apiserver: Option<String>,
    /// Client certificate for proxied requests without credentials (default: --tls-cert).
    #[arg(long, value_name = "FILE")]
    pub hub_client_cert: Option<PathBuf>,
    /// Key of --hub-client-cert (default: --tls-key).
    #[arg(long, value_name = "FILE")]
    pub hub_client_key: Option<PathBuf>,
    /// CA bundle verifying the apiserver (default: the system trust store).
    #[arg(long, value_name = "FILE")]
    pub hub_apiserver_ca: Option<PathBuf>,
    /// TLS server name of the apiserver (default: the --apiserver host, or
    /// kubernetes.default.svc with --apiserver tunnel).
    #[arg(long, value_name = "NAME")]
    pub hub_apiserver_server_name: Option<String>,
    /// User-Agent components whose responses are cached; `*` = all.
    #[arg(long, default_value = "kubelet,kube-proxy,coredns,flanneld")]
    pub hub_components: String,
    /// Autonomy cache directory.
    #[arg(long, default_value = "/var/lib/tunnel-agent/cache")]
    pub cache_dir: PathBuf,
    /// Disk quota of the cache (e.g. 1GiB, 512MiB, 100M, 4096).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub cache_max_bytes: u64,
    /// Cached components that have not asked for this long are removed.
    #[arg(long, default_value = "168h", value_parser = parse_duration)]
    pub cache_gc_after: Duration,
    /// How often the hub probes the apiserver (probes may overlap).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub hub_probe_interval: Duration,
    /// A probe unanswered for this long counts as a failure (one failure = offline).
    #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
    pub hub_probe_timeout: Duration,
    /// With `--apiserver tunnel`: while online, the tunnel up and no request
    /// waiting, probe only after this long without an upstream answer (`0s`: never).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub hub_idle_probe_interval: Duration,
    /// Consecutive successful probes must span this long before the hub goes back online.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub hub_online_after: Duration,
}

/// `--transport` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportChoice {
    /// QUIC, falling back to WebSocket when QUIC fails.
    Auto,
    /// QUIC only.
    Quic,
    /// WebSocket over TLS only.
    Websocket,
}

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The first `--server` (enrollment, proxy choice, check-config).
    pub server_host: String,
    pub server_port: u16,
    /// Every `--server`.
    pub servers: Vec<crate::servers::ServerName>,
    pub server_resolve_interval: Duration,
    pub node_name: Option<String>,
    pub node_ips: Vec<IpAddr>,
    pub transport: TransportChoice,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub server_ca: PathBuf,
    pub bootstrap_token: Option<certs::BootstrapToken>,
    pub allow: Vec<AllowRule>,
    pub admin_addr: SocketAddr,
    pub dial_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    pub congestion_control: CongestionControl,
    pub proxy: Option<String>,
    pub quic_probe_interval: Duration,
    /// The node proxy, or why it is off.
    pub hub: HubSetting,
    /// `--hub-interface`: the dummy interface to hold the HTTPS listener's address.
    pub hub_interface: Option<String>,
}

/// A required flag is missing or a value is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--{0} is required")]
    Missing(&'static str),
    #[error("--server {0:?} must be HOST:PORT")]
    BadServer(String),
    #[error("--bootstrap-token: {0}")]
    BadToken(certs::TokenError),
    #[error("--server-resolve-interval must be at least 1s")]
    ResolveTooShort,
    #[error("--quic-probe-interval must be at least 1s")]
    ProbeTooShort,
    #[error("--keepalive ({keepalive:?}) must be shorter than --idle-timeout ({idle:?})")]
    KeepaliveTooLong { keepalive: Duration, idle: Duration },
    #[error(transparent)]
    Hub(#[from] HubConfigError),
    #[error(transparent)]
    HubInterface(#[from] crate::hub_interface::HubInterfaceError),
    #[error(
        "--hub-interface needs the HTTPS listener (--apiserver set and --hub-https-addr not `off`)"
    )]
    HubInterfaceWithoutListener,
}

impl TryFrom<Cli> for AgentConfig {
    type Error = ConfigError;

    fn try_from(c: Cli) -> Result<Self, Self::Error> {
        if c.server.is_empty() {
            return Err(ConfigError::Missing("server"));
        }
        let servers = c
            .server
            .iter()
            .map(|s| {
                split_host_port(s)
                    .map(|(host, port)| crate::servers::ServerName { host, port })
                    .ok_or(ConfigError::BadServer(s.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (host, port) = (servers[0].host.clone(), servers[0].port);
        if c.server_resolve_interval < Duration::from_secs(1) {
            return Err(ConfigError::ResolveTooShort);
        }
        if c.quic_probe_interval < Duration::from_secs(1) {
            return Err(ConfigError::ProbeTooShort);
        }
        if c.keepalive >= c.idle_timeout {
            return Err(ConfigError::KeepaliveTooLong {
                keepalive: c.keepalive,
                idle: c.idle_timeout,
            });
        }
        let hub = hub_setting(&c)?;
        let hub_interface = match c.hub_interface.clone() {
            None => None,
            Some(name) => {
                crate::hub_interface::check_name(&name)?;
                match &hub {
                    HubSetting::On(h) if h.https_addr.is_some() => Some(name),
                    _ => return Err(ConfigError::HubInterfaceWithoutListener),
                }
            }
        };
        Ok(AgentConfig {
            hub,
            hub_interface,
            server_host: host,
            server_port: port,
            servers,
            server_resolve_interval: c.server_resolve_interval,
            node_name: c.node_name,
            node_ips: c.node_ips,
            transport: c.transport,
            tls_cert: c.tls_cert.ok_or(ConfigError::Missing("tls-cert"))?,
            tls_key: c.tls_key.ok_or(ConfigError::Missing("tls-key"))?,
            server_ca: c.server_ca.ok_or(ConfigError::Missing("server-ca"))?,
            bootstrap_token: c
                .bootstrap_token
                .as_deref()
                .map(certs::BootstrapToken::parse)
                .transpose()
                .map_err(ConfigError::BadToken)?,
            allow: c.allow,
            admin_addr: c.admin_addr,
            dial_timeout: c.dial_timeout,
            connect_timeout: c.connect_timeout,
            keepalive: c.keepalive,
            idle_timeout: c.idle_timeout,
            congestion_control: c.congestion_control,
            proxy: c.proxy,
            quic_probe_interval: c.quic_probe_interval,
        })
    }
}

/// Validates the hub flags; the hub runs only with `--apiserver` and a `--hub-addr`.
fn hub_setting(c: &Cli) -> Result<HubSetting, ConfigError> {
    let listen = settings::parse_listen(&c.hub_addr)?;
    let components = settings::parse_components(&c.hub_components)?;
    let probe = ProbeSettings {
        interval: c.hub_probe_interval,
        timeout: c.hub_probe_timeout,
        online_after: c.hub_online_after,
        idle_interval: Some(c.hub_idle_probe_interval).filter(|d| !d.is_zero()),
    };
    settings::check_probe(&probe)?;
    let https_addr = settings::parse_listen(&c.hub_https_addr)
        .map_err(|_| HubConfigError::BadHttpsAddr(c.hub_https_addr.clone()))?;
    let serving = settings::serving_source(c.hub_serving_cert.clone(), c.hub_serving_key.clone())?;
    let filters = settings::filter_settings(
        https_addr,
        c.hub_filter_masterservice,
        c.hub_filter_topology,
        &c.pool_label,
    )?;
    let Some(apiserver) = c.apiserver.as_deref() else {
        return Ok(HubSetting::Off(
            "no --apiserver: the node proxy has no upstream",
        ));
    };
    let upstream = settings::parse_apiserver(apiserver)?;
    let Some(listen) = listen else {
        return Ok(HubSetting::Off("--hub-addr off"));
    };
    let tls_cert = c.tls_cert.clone().ok_or(ConfigError::Missing("tls-cert"))?;
    let tls_key = c.tls_key.clone().ok_or(ConfigError::Missing("tls-key"))?;
    Ok(HubSetting::On(Box::new(HubConfig {
        listen,
        server_name: settings::server_name(&upstream, c.hub_apiserver_server_name.as_deref()),
        upstream,
        client_cert: c.hub_client_cert.clone().unwrap_or(tls_cert),
        client_key: c.hub_client_key.clone().unwrap_or(tls_key),
        apiserver_ca: c.hub_apiserver_ca.clone(),
        components,
        cache_dir: c.cache_dir.clone(),
        cache_max_bytes: c.cache_max_bytes,
        cache_gc_after: c.cache_gc_after,
        probe,
        https_addr,
        serving,
        node_name: String::new(),
        filters,
    })))
}

/// Splits `host:port` / `[v6]:port` into a host (no brackets) and port.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(' ') {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("tunnel-agent").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        AgentConfig::try_from(cli).map_err(|e| e.to_string())
    }

    const BASE: &[&str] = &[
        "--server",
        "tunnel.example:8132",
        "--tls-cert",
        "a.crt",
        "--tls-key",
        "a.key",
        "--server-ca",
        "ca.crt",
    ];

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.server_host, "tunnel.example");
        assert_eq!(c.server_port, 8132);
        assert_eq!(c.admin_addr, "127.0.0.1:8134".parse().unwrap());
        assert_eq!(c.transport, TransportChoice::Auto);
        assert_eq!(c.server_resolve_interval, Duration::from_secs(30));
        assert!(c.allow.is_empty());
        assert_eq!(c.keepalive, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.congestion_control, CongestionControl::LossTolerant);
    }

    #[test]
    fn congestion_control_is_chosen_by_name() {
        let mut a = BASE.to_vec();
        a.push("--congestion-control=bbr");
        assert_eq!(
            parse(&a).unwrap().congestion_control,
            CongestionControl::Bbr
        );
        let mut a = BASE.to_vec();
        a.push("--congestion-control=vegas");
        let err = parse(&a).unwrap_err();
        assert!(
            err.contains("--congestion-control") && err.contains("bbr"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_flag() {
        assert_eq!(parse(&[]).unwrap_err(), "--server is required");
        let mut a = BASE.to_vec();
        a[1] = "nocolon";
        assert!(parse(&a).unwrap_err().contains("HOST:PORT"));
        let mut a = BASE.to_vec();
        a.extend(["--allow", "10.0.0.1"]);
        assert!(parse(&a).unwrap_err().contains("invalid --allow"));
    }

    #[test]
    fn hub_interface_needs_a_valid_name_and_the_https_listener() {
        let mut a = BASE.to_vec();
        a.extend(["--apiserver", "https://10.0.0.1:6443"]);
        let mut named = a.clone();
        named.extend(["--hub-interface", "edgehub0"]);
        assert_eq!(
            parse(&named).unwrap().hub_interface.as_deref(),
            Some("edgehub0")
        );
        let mut bad = a.clone();
        bad.extend(["--hub-interface", "a/b"]);
        assert!(parse(&bad).unwrap_err().contains("--hub-interface \"a/b\""));
        let mut off = named.clone();
        off.extend(["--hub-https-addr", "off"]);
        assert!(parse(&off)
            .unwrap_err()
            .contains("needs the HTTPS listener"));
        let mut no_hub = BASE.to_vec();
        no_hub.extend(["--hub-interface", "edgehub0"]);
        assert!(parse(&no_hub)
            .unwrap_err()
            .contains("needs the HTTPS listener"));
    }

    #[test]
    fn bootstrap_token_is_checked_and_hidden() {
        let mut a = BASE.to_vec();
        a.extend(["--bootstrap-token", "abcdef.0123456789abcdef"]);
        let c = parse(&a).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        a.pop();
        a.push("nope");
        assert!(parse(&a).unwrap_err().contains("malformed bootstrap token"));
    }

    #[test]
    fn hub_runs_only_with_an_apiserver() {
        let c = parse(BASE).unwrap();
        assert!(matches!(c.hub, HubSetting::Off(r) if r.contains("--apiserver")));
        let mut a = BASE.to_vec();
        a.extend(["--apiserver", "https://10.0.0.1:6443"]);
        let HubSetting::On(h) = parse(&a).unwrap().hub else {
            panic!("hub should run with --apiserver");
        };
        assert_eq!(h.listen, "127.0.0.1:10261".parse().unwrap());
        assert_eq!(h.client_cert, PathBuf::from("a.crt"));
        assert_eq!(h.client_key, PathBuf::from("a.key"));
        assert_eq!(h.cache_dir, PathBuf::from("/var/lib/tunnel-agent/cache"));
        assert_eq!(h.cache_max_bytes, 1 << 30);
        assert_eq!(h.cache_gc_after, Duration::from_secs(168 * 3600));
        assert_eq!(h.server_name, "10.0.0.1");
        assert_eq!(h.apiserver_ca, None);
        let https: std::net::SocketAddr = "169.254.2.1:10268".parse().unwrap();
        assert_eq!(h.https_addr, Some(https));
        assert_eq!(
            h.filters.masterservice,
            Some(https),
            "on by default, pointing at the HTTPS listener"
        );
        assert_eq!(h.serving, settings::ServingSource::Csr);
        assert!(h.filters.topology);
        assert_eq!(h.filters.pool_label, "topology.kubernetes.io/zone");
        a.extend(["--hub-addr", "off"]);
        assert!(matches!(parse(&a).unwrap().hub, HubSetting::Off(_)));
    }

    #[test]
    fn hub_flags_parse_and_errors_name_them() {
        let mut a = BASE.to_vec();
        a.extend([
            "--apiserver",
            "tunnel",
            "--cache-max-bytes",
            "512MiB",
            "--hub-client-cert",
            "h.crt",
            "--hub-addr",
            "127.0.0.1:1",
        ]);
        let HubSetting::On(h) = parse(&a).unwrap().hub else {
            panic!("hub should run");
        };
        assert_eq!(h.cache_max_bytes, 512 << 20);
        assert_eq!(h.client_cert, PathBuf::from("h.crt"));
        assert_eq!(h.server_name, settings::IN_CLUSTER_SERVER_NAME);
        let mut filters = a.clone();
        filters.extend([
            "--hub-filter-masterservice",
            "true",
            "--hub-filter-topology=false",
            "--pool-label",
            "apps.openyurt.io/nodepool",
        ]);
        let HubSetting::On(h) = parse(&filters).unwrap().hub else {
            panic!("hub should run");
        };
        assert_eq!(h.filters.masterservice, h.https_addr);
        assert!(!h.filters.topology);
        assert_eq!(h.filters.pool_label, "apps.openyurt.io/nodepool");
        filters.extend(["--hub-https-addr", "off"]);
        let e = parse(&filters).unwrap_err();
        assert!(e.contains("--hub-filter-masterservice"), "{e}");
        let mut no_https = a.clone();
        no_https.extend(["--hub-https-addr", "off"]);
        let HubSetting::On(h) = parse(&no_https).unwrap().hub else {
            panic!("hub should run");
        };
        assert_eq!(
            h.filters.masterservice, None,
            "the default follows the listener"
        );
        let mut half = a.clone();
        half.extend(["--hub-serving-cert", "s.crt"]);
        let e = parse(&half).unwrap_err();
        assert!(e.contains("--hub-serving-key"), "{e}");
        for (flag, value) in [
            ("--hub-https-addr", "localhost:1"),
            ("--pool-label", "a b"),
            ("--apiserver", "http://x"),
            ("--hub-addr", "nope"),
            ("--cache-max-bytes", "lots"),
            ("--hub-probe-timeout", "1ms"),
        ] {
            let mut a = BASE.to_vec();
            a.extend(["--apiserver", "https://a:1", flag, value]);
            let e = parse(&a).unwrap_err();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn server_repeats() {
        let mut a = BASE.to_vec();
        a.extend(["--server", "[::1]:9000", "--server-resolve-interval", "5s"]);
        let c = parse(&a).unwrap();
        let hosts: Vec<(&str, u16)> = c
            .servers
            .iter()
            .map(|s| (s.host.as_str(), s.port))
            .collect();
        assert_eq!(hosts, [("tunnel.example", 8132), ("::1", 9000)]);
        assert_eq!(c.server_host, "tunnel.example");
        assert_eq!(c.server_resolve_interval, Duration::from_secs(5));
        a.extend(["--server", "bad"]);
        assert!(parse(&a).unwrap_err().contains("\"bad\""));
    }

    #[test]
    fn ipv6_server_address() {
        let mut a = BASE.to_vec();
        a[1] = "[::1]:8132";
        let c = parse(&a).unwrap();
        assert_eq!(c.server_host, "::1");
    }
}
