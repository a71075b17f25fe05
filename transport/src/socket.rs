//! Local sockets that can be aborted with a TCP reset.
//!
//! When the far side of a tunnel stream was reset, the near TCP peer should
//! see a reset too, not a clean FIN that looks like a complete response.

use std::io;

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
    /// Unix sockets have no reset; dropping closes them, which is the best signal there is.
    fn abort_on_drop(&self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: AbortOnDrop> AbortOnDrop for tokio_rustls::server::TlsStream<T> {
    fn abort_on_drop(&self) -> io::Result<()> {
        self.get_ref().0.abort_on_drop()
    }
}
