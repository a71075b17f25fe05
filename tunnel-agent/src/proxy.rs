//! Reaching the server through an HTTP proxy (CONNECT), for edge sites that
//! only let HTTPS out through one.
//!
//! `--proxy URL` wins; otherwise `HTTPS_PROXY`/`https_proxy`, unless the
//! server matches `NO_PROXY`/`no_proxy` — the conventions curl and Go use.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP proxy to tunnel through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProxy {
    pub host: String,
    pub port: u16,
    /// `user:password` for `Proxy-Authorization: Basic`.
    pub credentials: Option<String>,
}

/// Why a proxy setting or a proxy's answer was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid proxy URL {0:?} (expected http://[user:pass@]host:port)")]
    BadUrl(String),
    #[error("connecting to proxy {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("proxy {addr} refused CONNECT: {status_line}")]
    Refused { addr: String, status_line: String },
    #[error("proxy {addr} sent an invalid response: {reason}")]
    BadResponse { addr: String, reason: String },
}

impl HttpProxy {
    /// Parses `http://[user:pass@]host[:port]` (port defaults to 80; a bare
    /// `host:port` is accepted as http).
    pub fn parse(url: &str) -> Result<Self, ProxyError> {
        let bad = || ProxyError::BadUrl(url.to_string());
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(bad()),
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c.to_string()), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (hostport, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_string(),
            port,
            credentials,
        })
    }

    /// The proxy to use for `server_host`: the flag, else the environment.
    pub fn select(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        server_host: &str,
    ) -> Result<Option<Self>, ProxyError> {
        if let Some(url) = flag {
            return Self::parse(url).map(Some);
        }
        let url = env("HTTPS_PROXY").or_else(|| env("https_proxy"));
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let no_proxy = env("NO_PROXY")
            .or_else(|| env("no_proxy"))
            .unwrap_or_default();
        if bypasses(&no_proxy, server_host) {
            return Ok(None);
        }
        Self::parse(&url).map(Some)
    }

    /// Opens a TCP connection to `target_host:port` through this proxy.
    pub async fn connect(
        &self,
        target_host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, ProxyError> {
        let addr = format!("{}:{}", self.host, self.port);
        let fail = |reason: String| ProxyError::Connect {
            addr: addr.clone(),
            reason,
        };
        let mut tcp =
            tokio::time::timeout(timeout, TcpStream::connect((self.host.as_str(), self.port)))
                .await
                .map_err(|_| fail("timed out".into()))?
                .map_err(|e| fail(e.to_string()))?;
        let authority = if target_host.contains(':') {
            format!("[{target_host}]:{port}")
        } else {
            format!("{target_host}:{port}")
        };
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(c) = &self.credentials {
            req.push_str(&format!(
                "Proxy-Authorization: Basic {}\r\n",
                base64(c.as_bytes())
            ));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Read the response head byte by byte: nothing after it may be consumed.
        let mut head = Vec::with_capacity(256);
        let mut b = [0u8; 1];
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut b).await.map_err(|e| fail(e.to_string()))? == 0 {
                    return Err(fail("closed during CONNECT".into()));
                }
                head.push(b[0]);
                if head.len() > 8192 {
                    return Err(ProxyError::BadResponse {
                        addr: addr.clone(),
                        reason: "response head over 8 KiB".into(),
                    });
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| fail("no CONNECT response in time".into()))??;
        check_connect_response(&head).map_err(|status_line| ProxyError::Refused {
            addr: addr.clone(),
            status_line,
        })?;
        Ok(tcp)
    }
}

/// Ok if the head is a 2xx answer, else the status line.
pub fn check_connect_response(head: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default().to_string();
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (200..300).contains(&code) => Ok(()),
        _ => Err(line),
    }
}

/// True if `host` matches a `NO_PROXY` entry (`*`, exact, or domain suffix).
pub fn bypasses(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|e| {
            if e == "*" {
                return true;
            }
            let e = e.trim_start_matches('.');
            host == e || host.ends_with(&format!(".{e}"))
        })
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls() {
        assert_eq!(
            HttpProxy::parse("http://proxy.local:3128").unwrap(),
            HttpProxy {
                host: "proxy.local".into(),
                port: 3128,
                credentials: None
            }
        );
        assert_eq!(
            HttpProxy::parse("http://u:p@10.0.0.1:8080/").unwrap(),
            HttpProxy {
                host: "10.0.0.1".into(),
                port: 8080,
                credentials: Some("u:p".into())
            }
        );
        assert_eq!(HttpProxy::parse("proxy:3128").unwrap().port, 3128);
        assert_eq!(HttpProxy::parse("http://proxy").unwrap().port, 80);
        assert_eq!(
            HttpProxy::parse("http://[fd00::1]:3128").unwrap().host,
            "fd00::1"
        );
        for bad in [
            "socks5://x:1",
            "http://:80",
            "http://x:notaport",
            "http://x:0",
        ] {
            assert!(HttpProxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selects_flag_then_environment_honouring_no_proxy() {
        let env = |k: &str| match k {
            "HTTPS_PROXY" => Some("http://envproxy:3128".to_string()),
            "NO_PROXY" => Some("localhost, .internal".to_string()),
            _ => None,
        };
        let p = HttpProxy::select(None, env, "tunnel.example.com")
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "envproxy");
        assert!(HttpProxy::select(None, env, "tunnel.internal")
            .unwrap()
            .is_none());
        assert!(HttpProxy::select(None, env, "localhost").unwrap().is_none());
        let p = HttpProxy::select(Some("http://flag:1"), env, "localhost")
            .unwrap()
            .unwrap();
        assert_eq!(p.host, "flag");
        assert!(HttpProxy::select(None, |_| None, "x").unwrap().is_none());
    }

    #[test]
    fn no_proxy_matching() {
        assert!(bypasses("*", "anything"));
        assert!(bypasses("example.com", "a.example.com"));
        assert!(bypasses(".example.com", "example.com"));
        assert!(!bypasses("example.com", "badexample.com"));
        assert!(!bypasses("", "x"));
    }

    #[test]
    fn connect_responses() {
        assert!(check_connect_response(b"HTTP/1.1 200 Connection established\r\n\r\n").is_ok());
        assert!(check_connect_response(b"HTTP/1.0 200 OK\r\n\r\n").is_ok());
        assert_eq!(
            check_connect_response(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Err("HTTP/1.1 407 Proxy Authentication Required".into())
        );
        assert!(check_connect_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn basic_auth_encoding() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
