//! `--forward LISTEN=NODE/HOST:PORT`, parsed without I/O.
//!
//! `LISTEN` is `ADDR:PORT` (IPv6 in brackets) or a bare `PORT`, which binds
//! `127.0.0.1` so a forward is never exposed beyond the host by accident.
//! `NODE` is the node name an agent registered with; `HOST:PORT` is what that
//! agent dials (its `--allow` decides whether it may).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use proto::{DialTarget, TargetParseError};

/// One forward: a cloud listener and the edge destination behind it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    /// Where the cloud side listens.
    pub listen: SocketAddr,
    /// Whose agent dials.
    pub node: String,
    /// What the agent dials.
    pub target: DialTarget,
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.listen, self.node, self.target)
    }
}

/// Why a `--forward` value was refused; the message quotes the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardParseError {
    #[error("--forward {0:?}: expected LISTEN=NODE/HOST:PORT (missing '=')")]
    MissingEquals(String),
    #[error("--forward {value:?}: listen address {listen:?} is not ADDR:PORT or PORT")]
    BadListen { value: String, listen: String },
    #[error("--forward {0:?}: expected LISTEN=NODE/HOST:PORT (missing '/' after the node name)")]
    MissingSlash(String),
    #[error("--forward {value:?}: node name {node:?} is empty or contains characters other than letters, digits, '-', '.', '_'")]
    BadNode { value: String, node: String },
    #[error("--forward {value:?}: {source}")]
    BadTarget {
        value: String,
        source: TargetParseError,
    },
}

/// Parses one `--forward` value.
pub fn parse_forward(value: &str) -> Result<ForwardSpec, ForwardParseError> {
    let (listen, rest) = value
        .split_once('=')
        .ok_or_else(|| ForwardParseError::MissingEquals(value.to_string()))?;
    let listen = parse_listen(listen).ok_or_else(|| ForwardParseError::BadListen {
        value: value.to_string(),
        listen: listen.to_string(),
    })?;
    let (node, target) = rest
        .split_once('/')
        .ok_or_else(|| ForwardParseError::MissingSlash(value.to_string()))?;
    let node_ok = !node.is_empty()
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !node_ok {
        return Err(ForwardParseError::BadNode {
            value: value.to_string(),
            node: node.to_string(),
        });
    }
    let target: DialTarget = target
        .parse()
        .map_err(|source| ForwardParseError::BadTarget {
            value: value.to_string(),
            source,
        })?;
    Ok(ForwardSpec {
        listen,
        node: node.to_string(),
        target,
    })
}

fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(port) = u16::from_str(s) {
        return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_short_forms() {
        let f = parse_forward("0.0.0.0:8443=edge-1/127.0.0.1:6443").unwrap();
        assert_eq!(f.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(f.node, "edge-1");
        assert_eq!(f.target.to_string(), "127.0.0.1:6443");
        assert_eq!(f.to_string(), "0.0.0.0:8443=edge-1/127.0.0.1:6443");

        let f = parse_forward("9000=shop_7.eu/db.local:5432").unwrap();
        assert_eq!(f.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(f.target.to_string(), "db.local:5432");

        let f = parse_forward("[::1]:0=n/[fe80::1]:22").unwrap();
        assert_eq!(f.listen, "[::1]:0".parse().unwrap());
        assert_eq!(f.target.to_string(), "[fe80::1]:22");
    }

    #[test]
    fn errors_name_the_part_that_is_wrong() {
        use ForwardParseError::*;
        type IsExpected = fn(&ForwardParseError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("8443", |e| matches!(e, MissingEquals(_))),
            ("host:x=n/a:1", |e| matches!(e, BadListen { .. })),
            ("70000=n/a:1", |e| matches!(e, BadListen { .. })),
            ("=n/a:1", |e| matches!(e, BadListen { .. })),
            ("8443=edge-1", |e| matches!(e, MissingSlash(_))),
            ("8443=/a:1", |e| matches!(e, BadNode { .. })),
            ("8443=a b/a:1", |e| matches!(e, BadNode { .. })),
            ("8443=n/a", |e| matches!(e, BadTarget { .. })),
            ("8443=n/a:0", |e| matches!(e, BadTarget { .. })),
            ("8443=n/::1:22", |e| matches!(e, BadTarget { .. })),
        ];
        for (value, ok) in cases {
            let e = parse_forward(value).unwrap_err();
            assert!(ok(&e), "{value}: {e:?}");
            assert!(e.to_string().contains(value), "{value}: {e}");
        }
    }

    #[test]
    fn equal_specs_compare_equal() {
        let a = parse_forward("9000=n/A.local:1").unwrap();
        let b = parse_forward("127.0.0.1:9000=n/a.local:1").unwrap();
        assert_eq!(a, b);
    }
}
