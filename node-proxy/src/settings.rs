//! The node proxy's validated settings and the pure parsing of its flag values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use autonomy_cache::ComponentRule;

/// TLS server name the apiserver presents inside the cluster (used with `--apiserver tunnel`).
pub const IN_CLUSTER_SERVER_NAME: &str = "kubernetes.default.svc";

/// Everything the hub needs, validated once at startup.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `--hub-addr`: where kubelet and friends connect (plain HTTP, like YurtHub).
    pub listen: SocketAddr,
    /// `--apiserver`: how the apiserver is reached.
    pub upstream: ApiserverTarget,
    /// TLS server name checked against the apiserver's certificate.
    pub server_name: String,
    /// Client certificate for requests without credentials of their own.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
    /// `--hub-apiserver-ca`; `None` = the operating system's trust store.
    pub apiserver_ca: Option<PathBuf>,
    /// `--hub-components`: whose responses are cached.
    pub components: ComponentRule,
    /// `--cache-dir`.
    pub cache_dir: PathBuf,
    /// `--cache-max-bytes`.
    pub cache_max_bytes: u64,
    /// `--cache-gc-after`: components not seen for this long are dropped.
    pub cache_gc_after: Duration,
    /// Upstream health probing.
    pub probe: ProbeSettings,
    /// `--hub-https-addr`: the HTTPS listener for pods (`None`: `off`); the
    /// masterservice filter points kubelet's `default/kubernetes` at it.
    pub https_addr: Option<SocketAddr>,
    /// Where the HTTPS listener's certificate comes from.
    pub serving: ServingSource,
    /// This node's name (the serving certificate's `system:node:<name>`);
    /// filled in by the agent.
    pub node_name: String,
    /// Response filters.
    pub filters: FilterSettings,
}

/// The response filters (`src/filters/`): which run, and what they need
/// (`Default`: none run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSettings {
    /// `--hub-filter-masterservice`: kubelet's `default/kubernetes` Service,
    /// Endpoints and EndpointSlice point at this address (`--hub-https-addr`).
    pub masterservice: Option<SocketAddr>,
    /// `--hub-filter-topology`: pool topology for kube-proxy and CoreDNS.
    pub topology: bool,
    /// `--pool-label`: the node label naming a node's pool.
    pub pool_label: String,
    /// This node's name (its cached Node object holds its pool); empty until
    /// the agent knows it, and then topology fails open.
    pub node_name: String,
}

/// The HTTPS listener's serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingSource {
    /// `--hub-serving-cert`/`--hub-serving-key`: used as is, reloaded on change.
    Files { cert: PathBuf, key: PathBuf },
    /// Requested through the CertificateSigningRequest API, kept in the cache directory.
    Csr,
}

/// `--hub-serving-cert`/`--hub-serving-key`: both (files) or neither (CSR).
pub fn serving_source(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<ServingSource, HubConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(ServingSource::Files { cert, key }),
        (None, None) => Ok(ServingSource::Csr),
        (Some(_), None) => Err(HubConfigError::ServingPair("--hub-serving-key")),
        (None, Some(_)) => Err(HubConfigError::ServingPair("--hub-serving-cert")),
    }
}

/// How the prober checks the upstream (the policy is in `health.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSettings {
    /// `--hub-probe-interval`: a probe starts this often (probes may overlap).
    pub interval: Duration,
    /// `--hub-probe-timeout`: a probe without an answer by then is a failure.
    pub timeout: Duration,
    /// `--hub-idle-probe-interval` (`None`: `0s`, never): with `--apiserver
    /// tunnel`, while online and quiet, probe after this long without an answer.
    pub idle_interval: Option<Duration>,
    /// `--hub-online-after`: consecutive successes must span this long before going online.
    pub online_after: Duration,
}

/// Where `--apiserver` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiserverTarget {
    /// `https://HOST[:PORT]`: a direct TCP connection.
    Direct { host: String, port: u16 },
    /// `tunnel`: through the agent's tunnel connection to the server's `--apiserver`.
    Tunnel,
}

/// Whether the hub runs, and if not, why (logged once at startup).
#[derive(Debug, Clone)]
pub enum HubSetting {
    /// The hub runs with this configuration.
    On(Box<HubConfig>),
    /// The hub does not run.
    Off(&'static str),
}

/// A hub flag value is unusable; the message names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HubConfigError {
    #[error("--hub-addr {0:?} must be HOST:PORT (an IP address) or `off`")]
    BadListen(String),
    #[error("--apiserver {0:?} must be https://HOST[:PORT] or `tunnel`")]
    BadApiserver(String),
    #[error("--hub-components {value:?}: {reason}")]
    BadComponents { value: String, reason: String },
    #[error("--hub-idle-probe-interval ({idle:?}) must be 0s (never) or at least --hub-probe-interval ({interval:?})")]
    IdleProbeTooShort { idle: Duration, interval: Duration },
    #[error("--hub-https-addr {0:?} must be HOST:PORT (an IP address) or `off`")]
    BadHttpsAddr(String),
    #[error("--hub-filter-masterservice needs --hub-https-addr (it is `off`)")]
    MasterServiceWithoutHttps,
    #[error("--hub-serving-cert and --hub-serving-key go together: {0} is missing")]
    ServingPair(&'static str),
    #[error("--pool-label {0:?} must be a label key (non-empty, no spaces or `=`)")]
    BadPoolLabel(String),
    #[error("--hub-probe-timeout ({timeout:?}) must be at least 100ms and --hub-probe-interval ({interval:?}) at least 100ms")]
    BadProbe {
        interval: Duration,
        timeout: Duration,
    },
}

/// Parses `--hub-addr`: `None` for `off`.
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, HubConfigError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| HubConfigError::BadListen(s.to_string()))
}

/// Parses `--apiserver`: `tunnel` or an `https://` URL (default port 443; a path is refused).
pub fn parse_apiserver(s: &str) -> Result<ApiserverTarget, HubConfigError> {
    let bad = || HubConfigError::BadApiserver(s.to_string());
    if s == "tunnel" {
        return Ok(ApiserverTarget::Tunnel);
    }
    let rest = s.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => 443,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), 443),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(ApiserverTarget::Direct { host, port })
}

/// Parses `--hub-components` into the cache's rule, naming the flag on error.
pub fn parse_components(s: &str) -> Result<ComponentRule, HubConfigError> {
    s.parse()
        .map_err(
            |e: <ComponentRule as std::str::FromStr>::Err| HubConfigError::BadComponents {
                value: s.to_string(),
                reason: e.to_string(),
            },
        )
}

/// The TLS server name: the flag if given, else the URL's host, else the in-cluster name.
pub fn server_name(target: &ApiserverTarget, flag: Option<&str>) -> String {
    match (flag, target) {
        (Some(n), _) => n.to_string(),
        (None, ApiserverTarget::Direct { host, .. }) => host.clone(),
        (None, ApiserverTarget::Tunnel) => IN_CLUSTER_SERVER_NAME.to_string(),
    }
}

/// The filter settings from their flags; `node_name` is filled in by the
/// agent. `masterservice` unset means on when there is an HTTPS listener.
pub fn filter_settings(
    https_addr: Option<SocketAddr>,
    masterservice: Option<bool>,
    topology: bool,
    pool_label: &str,
) -> Result<FilterSettings, HubConfigError> {
    let bad_label = pool_label.is_empty() || pool_label.contains([' ', '=', ',']);
    if bad_label {
        return Err(HubConfigError::BadPoolLabel(pool_label.to_string()));
    }
    let masterservice = match (masterservice, https_addr) {
        (Some(false), _) | (None, None) => None,
        (Some(true) | None, Some(addr)) => Some(addr),
        (Some(true), None) => return Err(HubConfigError::MasterServiceWithoutHttps),
    };
    Ok(FilterSettings {
        masterservice,
        topology,
        pool_label: pool_label.to_string(),
        node_name: String::new(),
    })
}

/// Checks the probe timings.
pub fn check_probe(p: &ProbeSettings) -> Result<(), HubConfigError> {
    let min = Duration::from_millis(100);
    if p.interval < min || p.timeout < min {
        return Err(HubConfigError::BadProbe {
            interval: p.interval,
            timeout: p.timeout,
        });
    }
    if let Some(idle) = p.idle_interval.filter(|idle| *idle < p.interval) {
        return Err(HubConfigError::IdleProbeTooShort {
            idle,
            interval: p.interval,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_off_and_socket_addresses() {
        assert_eq!(parse_listen("off"), Ok(None));
        assert_eq!(
            parse_listen("127.0.0.1:10261"),
            Ok(Some("127.0.0.1:10261".parse().unwrap()))
        );
        assert!(parse_listen("localhost:10261")
            .unwrap_err()
            .to_string()
            .contains("--hub-addr"));
    }

    #[test]
    fn apiserver_urls() {
        assert_eq!(parse_apiserver("tunnel"), Ok(ApiserverTarget::Tunnel));
        assert_eq!(
            parse_apiserver("https://10.0.0.1:6443"),
            Ok(ApiserverTarget::Direct {
                host: "10.0.0.1".into(),
                port: 6443
            })
        );
        assert_eq!(
            parse_apiserver("https://api.example/"),
            Ok(ApiserverTarget::Direct {
                host: "api.example".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_apiserver("https://[fd00::1]:6443"),
            Ok(ApiserverTarget::Direct {
                host: "fd00::1".into(),
                port: 6443
            })
        );
        for bad in [
            "http://a:1",
            "https://",
            "https://a:0",
            "https://a:x",
            "https://a/api",
            "https://u@a",
            "a:6443",
        ] {
            let e = parse_apiserver(bad).unwrap_err().to_string();
            assert!(e.contains("--apiserver"), "{bad}: {e}");
        }
    }

    #[test]
    fn filter_flags() {
        let https = Some("169.254.2.1:10268".parse().unwrap());
        let on = filter_settings(https, Some(true), true, "topology.kubernetes.io/zone").unwrap();
        assert_eq!(on.masterservice, https);
        assert!(on.topology);
        let default = filter_settings(https, None, true, "pool").unwrap();
        assert_eq!(
            default.masterservice, https,
            "on by default with a listener"
        );
        let no_listener = filter_settings(None, None, true, "pool").unwrap();
        assert_eq!(
            no_listener.masterservice, None,
            "off by default without one"
        );
        let off = filter_settings(https, Some(false), false, "pool").unwrap();
        assert_eq!((off.masterservice, off.topology), (None, false));
        assert_eq!(
            filter_settings(None, Some(true), true, "pool"),
            Err(HubConfigError::MasterServiceWithoutHttps)
        );
        assert!(filter_settings(None, None, true, "").is_err());
        assert!(filter_settings(None, None, true, "a=b").is_err());
    }

    #[test]
    fn serving_files_come_in_pairs() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(serving_source(None, None), Ok(ServingSource::Csr));
        assert_eq!(
            serving_source(p("c"), p("k")),
            Ok(ServingSource::Files {
                cert: "c".into(),
                key: "k".into()
            })
        );
        let e = serving_source(p("c"), None).unwrap_err().to_string();
        assert!(e.contains("--hub-serving-key is missing"), "{e}");
        let e = serving_source(None, p("k")).unwrap_err().to_string();
        assert!(e.contains("--hub-serving-cert is missing"), "{e}");
    }

    #[test]
    fn server_name_defaults() {
        let direct = ApiserverTarget::Direct {
            host: "10.0.0.1".into(),
            port: 6443,
        };
        assert_eq!(server_name(&direct, None), "10.0.0.1");
        assert_eq!(server_name(&direct, Some("api")), "api");
        assert_eq!(
            server_name(&ApiserverTarget::Tunnel, None),
            IN_CLUSTER_SERVER_NAME
        );
    }

    #[test]
    fn probe_timings_must_be_usable() {
        let ok = ProbeSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(1500),
            online_after: Duration::from_secs(2),
            idle_interval: Some(Duration::from_secs(60)),
        };
        assert!(check_probe(&ok).is_ok());
        let bad = ProbeSettings {
            timeout: Duration::from_millis(10),
            ..ok.clone()
        };
        assert!(check_probe(&bad)
            .unwrap_err()
            .to_string()
            .contains("--hub-probe-timeout"));
        let idle_too_short = ProbeSettings {
            idle_interval: Some(Duration::from_millis(200)),
            ..ok
        };
        assert!(check_probe(&idle_too_short)
            .unwrap_err()
            .to_string()
            .contains("--hub-idle-probe-interval"));
    }
}
