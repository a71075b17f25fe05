//! Reading the server name (SNI) out of a TLS ClientHello, without TLS (pure).
//!
//! The SNI passthrough front end routes a raw TLS connection by the name the
//! client asked for, then forwards every byte untouched, so it must read the
//! ClientHello without terminating TLS. [`parse`] looks at the bytes read so
//! far and answers "read more", the host name, or exactly why there is none.
//!
//! Nothing from the wire is trusted: every length is checked against the
//! bytes that contain it, and the whole ClientHello (which may span several
//! TLS records, RFC 8446 §5.1) is capped at [`MAX_HELLO`], so a client cannot
//! make the server buffer more than that.

/// Largest ClientHello accepted (handshake message, header included). Real
/// ones are a few hundred bytes; post-quantum key shares bring them to ~2 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

/// Largest TLS plaintext record body (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;
const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// Why the bytes are not a ClientHello with a usable server name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("not a TLS connection (the first bytes are not a TLS handshake record)")]
    NotTls,
    #[error("TLS record of {0} bytes exceeds the 16384-byte limit")]
    RecordTooLong(usize),
    #[error("the first TLS handshake message is not a ClientHello")]
    NotClientHello,
    #[error("the ClientHello has no server name (SNI) extension")]
    NoServerName,
    #[error("the ClientHello is malformed: {0}")]
    Truncated(&'static str),
    #[error("the ClientHello exceeds {MAX_HELLO} bytes")]
    TooLarge,
    #[error("the server name in the ClientHello is not a valid host name")]
    BadServerName,
}

/// Parses the start of a TLS connection.
///
/// `Ok(None)`: the ClientHello is not complete yet, read more bytes and call
/// again with all of them. `Ok(Some(name))`: the SNI host name, lower-cased.
/// Bytes after the ClientHello are ignored. Never panics, on any input.
pub fn parse(buf: &[u8]) -> Result<Option<String>, HelloError> {
    let Some(hello) = reassemble(buf)? else {
        return Ok(None);
    };
    server_name(&hello).map(Some)
}

/// Collects the ClientHello message from consecutive handshake records;
/// `None` while it is incomplete.
fn reassemble(buf: &[u8]) -> Result<Option<Vec<u8>>, HelloError> {
    let mut msg: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Ok(None);
        }
        if rest[0] != CONTENT_HANDSHAKE {
            // The very first byte decides "is this TLS at all"; a later
            // record of another type interrupts the ClientHello.
            return Err(if msg.is_empty() && rest.len() == buf.len() {
                HelloError::NotTls
            } else {
                HelloError::NotClientHello
            });
        }
        if rest.len() >= 2 && rest[1] != 3 {
            return Err(HelloError::NotTls);
        }
        if rest.len() < RECORD_HEADER {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len > MAX_RECORD {
            return Err(HelloError::RecordTooLong(len));
        }
        if len == 0 {
            return Err(HelloError::Truncated("empty handshake record"));
        }
        let body = &rest[RECORD_HEADER..];
        let take = len.min(body.len());
        msg.extend_from_slice(&body[..take]);
        // The handshake header says how long the whole message is.
        if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(HelloError::NotClientHello);
            }
            let total = 4 + u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if total > MAX_HELLO {
                return Err(HelloError::TooLarge);
            }
            if msg.len() >= total {
                msg.truncate(total);
                return Ok(Some(msg));
            }
        } else if !msg.is_empty() && msg[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
        if take < len {
            return Ok(None);
        }
        rest = &body[len..];
    }
}

/// A cursor over a byte slice whose reads fail instead of overrunning.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Truncated(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)? as usize;
        self.take(n, what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }
}

/// The host name of a complete ClientHello message (RFC 8446 §4.1.2, RFC 6066 §3).
fn server_name(msg: &[u8]) -> Result<String, HelloError> {
    let mut r = Reader(msg);
    r.take(4, "handshake header")?;
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    r.vec8("legacy_session_id")?;
    r.vec16("cipher_suites")?;
    r.vec8("legacy_compression_methods")?;
    if r.0.is_empty() {
        // An SSL 3.0-style hello without extensions.
        return Err(HelloError::NoServerName);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if kind == EXTENSION_SERVER_NAME {
            return host_name(data);
        }
    }
    Err(HelloError::NoServerName)
}

/// The `host_name` entry of a server_name extension.
fn host_name(ext: &[u8]) -> Result<String, HelloError> {
    let mut list = Reader(Reader(ext).vec16("server_name_list")?);
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if kind == NAME_TYPE_HOST_NAME {
            return valid_host(name);
        }
    }
    Err(HelloError::NoServerName)
}

/// A DNS host name (LDH labels, RFC 6066: no trailing dot, no IP literal).
fn valid_host(name: &[u8]) -> Result<String, HelloError> {
    let s = std::str::from_utf8(name).map_err(|_| HelloError::BadServerName)?;
    let ok = !s.is_empty()
        && s.len() <= crate::target::MAX_HOST_LEN
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(HelloError::BadServerName);
    }
    Ok(s.to_ascii_lowercase())
}

/// A TLS alert record (RFC 8446 §6): a fatal alert with `description`, for
/// closing a connection whose ClientHello cannot be served.
pub fn fatal_alert(description: AlertDescription) -> [u8; 7] {
    [21, 3, 3, 0, 2, 2, description as u8]
}

/// The alert descriptions the SNI front end sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AlertDescription {
    /// Not TLS, or a ClientHello that could not be parsed.
    DecodeError = 50,
    /// Refused by an allowlist.
    AccessDenied = 49,
    /// The connection could not be carried (dial failed, limits).
    InternalError = 80,
    /// No server name, or no node by that name.
    UnrecognizedName = 112,
}

#[cfg(test)]
#[path = "tls_hello_tests.rs"]
pub(crate) mod tests;
