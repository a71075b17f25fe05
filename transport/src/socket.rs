//! Local sockets that can be aborted with a TCP reset.
//!
//! When the far side of a tunnel stream was reset, the near TCP peer should
//! see a reset too, not a clean FIN that looks like a complete response.

use std::io;

use proto::DialErrorKind;

/// Maps a failed TCP connect to the kind of dial failure reported to the
/// other end of the tunnel (which turns it into an HTTP status).
pub fn dial_error_kind(e: &io::Error) -> DialErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => DialErrorKind::Refused,
        io::ErrorKind::TimedOut => DialErrorKind::Timeout,
        io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::AddrNotAvailable => DialErrorKind::Unreachable,
        _ => DialErrorKind::Other,
    }
}

/// A local stream that can be made to end with RST instead of FIN.
pub trait AbortOnDrop {
    /// Arrange for the connection to be reset when it is dropped.
    fn abort_on_drop(&self) -> io::Result<()>;
}

impl AbortOnDrop for tokio::net::TcpStream {
    fn abort_on_drop(&self) -> io::Result<()> {
        socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO))
    }
}

impl AbortOnDrop for tokio::net::UnixStream {
    /// Unix stream sockets have no reset (`SO_LINGER` is TCP-only). Closing
    /// without a half-close is the nearest signal: the peer reads the bytes
    /// already sent, then end-of-file, and its next write fails with `EPIPE`;
    /// if it had sent bytes that were never read, Linux fails its read with
    /// `ECONNRESET` instead (`unix_release_sock` sets that error when the
    /// closing socket's receive queue is not empty). Callers stop reading as
    /// soon as the far end broke, so such bytes stay unread.
    fn abort_on_drop(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: AbortOnDrop> AbortOnDrop for tokio_rustls::server::TlsStream<T> {
    fn abort_on_drop(&self) -> io::Result<()> {
        self.get_ref().0.abort_on_drop()
    }
}

/// TCP keep-alive for tunnel connections over TCP: holds NAT bindings open
/// and detects a peer that vanished without a FIN within about 15 s.
pub fn set_tcp_keepalive(tcp: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(5))
        .with_interval(std::time::Duration::from_secs(2))
        .with_retries(5);
    let sock = socket2::SockRef::from(tcp);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not enable TCP keep-alive");
    }
    let _ = sock.set_tcp_user_timeout(Some(std::time::Duration::from_secs(20)));
}
