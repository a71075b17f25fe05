//! Which destinations the server may ask this agent to dial.
//!
//! The incumbent dials anything it is asked; we dial only what `--allow`
//! names (by default the kubelet ports on the node's own addresses), so a
//! compromised or confused server cannot reach the rest of the edge network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use proto::{DialTarget, Host};

/// Kubelet's secure and read-only ports: the default destinations.
pub const DEFAULT_PORTS: [u16; 2] = [10250, 10255];

/// One `HOST:PORT[-PORT]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub host: Host,
    pub ports: RangeInclusive<u16>,
}

/// Why an `--allow` entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --allow {input:?}: {reason} (expected HOST:PORT or HOST:PORT-PORT)")]
pub struct AllowParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for AllowRule {
    type Err = AllowParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| AllowParseError {
            input: s.to_string(),
            reason,
        };
        let (host, ports) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let (lo, hi) = match ports.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (ports, ports),
        };
        let lo: u16 = lo.parse().map_err(|_| err("invalid port"))?;
        let hi: u16 = hi.parse().map_err(|_| err("invalid port"))?;
        if lo == 0 || hi < lo {
            return Err(err("port range must be 1-65535 and low-high"));
        }
        let host: Host = host.parse().map_err(|_| err("invalid host"))?;
        Ok(AllowRule {
            host,
            ports: lo..=hi,
        })
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ports.start() == self.ports.end() {
            write!(f, "{}:{}", self.host, self.ports.start())
        } else {
            write!(
                f,
                "{}:{}-{}",
                self.host,
                self.ports.start(),
                self.ports.end()
            )
        }
    }
}

/// The set of allowed destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    rules: Vec<AllowRule>,
}

impl Allowlist {
    /// Exactly these rules.
    pub fn new(rules: Vec<AllowRule>) -> Self {
        Self { rules }
    }

    /// The spec's default: each node IP and 127.0.0.1, at 10250 and 10255.
    pub fn default_for(node_ips: &[IpAddr]) -> Self {
        let mut hosts: Vec<IpAddr> = node_ips.to_vec();
        hosts.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        hosts.dedup();
        let rules = hosts
            .into_iter()
            .flat_map(|ip| {
                DEFAULT_PORTS.iter().map(move |p| AllowRule {
                    host: Host::Ip(ip),
                    ports: *p..=*p,
                })
            })
            .collect();
        Self { rules }
    }

    /// True if some rule matches the host exactly and covers the port.
    pub fn permits(&self, target: &DialTarget) -> bool {
        self.rules
            .iter()
            .any(|r| r.host == target.host && r.ports.contains(&target.port))
    }

    /// The rules, for logging at startup.
    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DialTarget {
        s.parse().unwrap()
    }

    #[test]
    fn default_allows_kubelet_ports_on_node_ips_and_localhost() {
        let a = Allowlist::default_for(&["10.0.0.5".parse().unwrap()]);
        assert!(a.permits(&t("10.0.0.5:10250")));
        assert!(a.permits(&t("10.0.0.5:10255")));
        assert!(a.permits(&t("127.0.0.1:10250")));
        assert!(!a.permits(&t("10.0.0.5:22")));
        assert!(!a.permits(&t("10.0.0.6:10250")));
        assert!(!a.permits(&t("localhost:10250")));
    }

    #[test]
    fn ranges_names_and_ipv6() {
        let a = Allowlist::new(vec![
            "127.0.0.1:9000-9100".parse().unwrap(),
            "db.local:5432".parse().unwrap(),
            "[fd00::1]:22".parse().unwrap(),
        ]);
        assert!(a.permits(&t("127.0.0.1:9000")));
        assert!(a.permits(&t("127.0.0.1:9100")));
        assert!(!a.permits(&t("127.0.0.1:9101")));
        assert!(a.permits(&t("DB.local:5432")));
        assert!(a.permits(&t("[fd00::1]:22")));
        assert_eq!(a.rules()[0].to_string(), "127.0.0.1:9000-9100");
    }

    #[test]
    fn malformed_rules_are_named() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:90-80",
            "a b:1",
            "x:1-",
            "x:70000",
        ] {
            let e = bad.parse::<AllowRule>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
