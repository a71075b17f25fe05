//! Plain HTTP/1.1 over raw sockets, for the proxy tests: a tiny keep-alive
//! web server that echoes what it received, and a response reader.
//!
//! Raw bytes instead of an HTTP library keep the tests honest about what is
//! on the wire (request line form, Host header, hop-by-hop headers).

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest body [`read_response`] accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A keep-alive HTTP/1.1 server on `addr`. Every request is answered 200
/// with a body of its request line and headers (lower-cased names), except
/// `/big?n=N`, answered with N bytes of [`crate::services::pattern`].
pub async fn web_server_on(addr: &str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&lower_header_name(&line));
                        if head.len() > 64 * 1024 {
                            return;
                        }
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let body = match path.strip_prefix("/big?n=").and_then(|n| n.parse().ok()) {
                        Some(n) => crate::services::pattern(n, 7),
                        None => head.clone().into_bytes(),
                    };
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=30\r\nConnection: keep-alive\r\n\r\n",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).await.is_err()
                        || w.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(local)
}

/// Lower-cases a header line's name, keeping a request or status line as sent.
fn lower_header_name(line: &str) -> String {
    match line.split_once(':') {
        Some((name, rest)) if !name.contains(' ') => {
            format!("{}:{rest}", name.to_ascii_lowercase())
        }
        _ => line.to_string(),
    }
}

/// One parsed response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The head (status line and headers), header names lower-cased.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response whose body is framed by Content-Length, or by the
/// connection's end when there is none.
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> anyhow::Result<HttpResponse> {
    let (status, head) = read_head(r).await?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            anyhow::ensure!(n <= MAX_BODY, "body of {n} bytes is too large");
            body.resize(n, 0);
            r.read_exact(&mut body).await?;
        }
        None => {
            r.take(MAX_BODY as u64).read_to_end(&mut body).await?;
        }
    }
    Ok(HttpResponse { status, head, body })
}

/// Reads a response head only (a CONNECT `200` has no body): the status
/// and the head with header names lower-cased.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> anyhow::Result<(u16, String)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            anyhow::bail!("connection closed inside the response head: {head:?}");
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&lower_header_name(&line));
        anyhow::ensure!(head.len() < 64 * 1024, "response head too large");
    }
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    Ok((status, head))
}

/// `GET http://target/` through the plain-HTTP proxy at `proxy`, on a new
/// connection: the proxy's answer (the edge service's, or its own error).
pub async fn get_via_proxy(proxy: SocketAddr, target: &str) -> anyhow::Result<HttpResponse> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let req = format!("GET http://{target}/ HTTP/1.1\r\nhost: {target}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    read_response(&mut BufReader::new(s)).await
}
