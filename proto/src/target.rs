//! `host:port` destinations, parsed once and validated.
//!
//! Every front end (HTTP CONNECT, gRPC, HTTP proxy, forwards) turns its
//! destination string into a [`DialTarget`] here, so "bad host:port" means the
//! same thing everywhere and IPv6 is always written in brackets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest host name accepted (DNS limit).
pub const MAX_HOST_LEN: usize = 253;

/// The host part of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (ASCII letters, digits, `-`, `.`, `_`), lower-cased.
    Name(String),
}

/// A destination the server asks an agent to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialTarget {
    /// Where to connect.
    pub host: Host,
    /// TCP port, never 0.
    pub port: u16,
}

/// Why a `host:port` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetParseError {
    #[error("missing port in {0:?} (expected host:port)")]
    MissingPort(String),
    #[error("invalid port in {0:?}")]
    InvalidPort(String),
    #[error("empty host in {0:?}")]
    EmptyHost(String),
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    #[error("IPv6 address must be in brackets: {0:?}")]
    UnbracketedIpv6(String),
}

impl DialTarget {
    /// Builds a target from parts (used by tests and configuration).
    pub fn new(host: Host, port: u16) -> Self {
        Self { host, port }
    }

    /// The host as it is matched against node names and IPs (no brackets).
    pub fn host_string(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for DialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for Host {
    type Err = TargetParseError;

    /// Parses a bare host: an IP (IPv6 with or without brackets) or a DNS name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let inner = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if inner.is_empty() {
            return Err(TargetParseError::EmptyHost(s.to_string()));
        }
        if let Ok(ip) = inner.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if inner.len() != s.len() || !is_dns_name(inner) {
            return Err(TargetParseError::InvalidHost(s.to_string()));
        }
        Ok(Host::Name(inner.to_ascii_lowercase()))
    }
}

impl FromStr for DialTarget {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetParseError::InvalidHost(s.to_string()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| TargetParseError::MissingPort(s.to_string()))?;
            let ip: std::net::Ipv6Addr = v6
                .parse()
                .map_err(|_| TargetParseError::InvalidHost(s.to_string()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| TargetParseError::MissingPort(s.to_string()))?;
            if host.contains(':') {
                return Err(TargetParseError::UnbracketedIpv6(s.to_string()));
            }
            if host.is_empty() {
                return Err(TargetParseError::EmptyHost(s.to_string()));
            }
            (
                host.parse::<Host>()
                    .map_err(|_| TargetParseError::InvalidHost(s.to_string()))?,
                port,
            )
        };
        let port = parse_port(port).ok_or_else(|| TargetParseError::InvalidPort(s.to_string()))?;
        Ok(DialTarget { host, port })
    }
}

/// Parses a decimal port 1..=65535 with no sign, spaces or leading `+`.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(p) => Some(p),
    }
}

/// True for a syntactically valid DNS name (labels of 1..=63 chars).
fn is_dns_name(s: &str) -> bool {
    s.len() <= MAX_HOST_LEN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_name_and_bracketed_ipv6() {
        let t: DialTarget = "10.0.0.5:10250".parse().unwrap();
        assert_eq!(t.host, Host::Ip("10.0.0.5".parse().unwrap()));
        assert_eq!(t.port, 10250);
        let t: DialTarget = "Edge-1.example:80".parse().unwrap();
        assert_eq!(t.host, Host::Name("edge-1.example".into()));
        let t: DialTarget = "[fd00::1]:10250".parse().unwrap();
        assert_eq!(t.to_string(), "[fd00::1]:10250");
        assert_eq!(t.host_string(), "fd00::1");
    }

    #[test]
    fn rejects_malformed_targets_with_precise_errors() {
        type MakeError = fn(String) -> TargetParseError;
        let cases: &[(&str, MakeError)] = &[
            ("10.0.0.5", TargetParseError::MissingPort),
            ("10.0.0.5:", TargetParseError::InvalidPort),
            ("10.0.0.5:0", TargetParseError::InvalidPort),
            ("10.0.0.5:65536", TargetParseError::InvalidPort),
            ("10.0.0.5:+80", TargetParseError::InvalidPort),
            (":80", TargetParseError::EmptyHost),
            ("fd00::1:80", TargetParseError::UnbracketedIpv6),
            ("bad host:80", TargetParseError::InvalidHost),
            ("[fd00::1]", TargetParseError::MissingPort),
            ("[nope]:80", TargetParseError::InvalidHost),
            ("-a:80", TargetParseError::InvalidHost),
        ];
        for (input, want) in cases {
            assert_eq!(
                input.parse::<DialTarget>(),
                Err(want(input.to_string())),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_overlong_names() {
        let long = format!("{}:80", "a.".repeat(200));
        assert!(long.parse::<DialTarget>().is_err());
    }
}
