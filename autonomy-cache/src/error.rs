//! Errors of the autonomy cache, one enum per job.

use std::path::PathBuf;

/// Why a request path or query could not be parsed (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request target does not start with `/`.
    #[error("request path {path:?} is not absolute")]
    NotAbsolute { path: String },
    /// Longer than the proxy accepts.
    #[error("request target is {len} bytes, more than the {max} accepted")]
    TooLong { len: usize, max: usize },
    /// A `.` or `..` segment, plain or percent-encoded.
    #[error("request path contains the dot segment {segment:?}")]
    DotSegment { segment: String },
    /// `//` inside the path.
    #[error("request path contains an empty segment (\"//\")")]
    EmptySegment,
    /// A percent-encoded `/` or `\` inside a segment.
    #[error("request path segment {segment:?} contains an encoded path separator")]
    EncodedSeparator { segment: String },
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8 once decoded.
    #[error("invalid percent-encoding in {part:?}")]
    BadPercentEncoding { part: String },
    /// A NUL or other control character in the path or a query value.
    #[error("request contains a control character in {part:?}")]
    ControlCharacter { part: String },
    /// A numeric query parameter that is not a number.
    #[error("query parameter {name}={value:?} is not a non-negative integer")]
    BadNumber { name: &'static str, value: String },
    /// `watch=` with something other than true/false/1/0.
    #[error("query parameter watch={value:?} is not a boolean")]
    BadBool { value: String },
    /// The HTTP method is empty or not a token.
    #[error("invalid HTTP method {method:?}")]
    BadMethod { method: String },
}

/// Why `--hub-components` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentRuleError {
    /// An empty name between commas.
    #[error("empty component name in {list:?}")]
    EmptyName { list: String },
    /// A name with `/`, whitespace or other characters a User-Agent product cannot hold.
    #[error("component name {name:?} may only hold letters, digits, '-', '_' and '.'")]
    BadName { name: String },
}

/// Why a label or field selector could not be parsed (the offline answer is 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// "label" or "field".
    pub kind: &'static str,
    /// The selector as the client sent it.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Why a watch response body could not be split into events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchDecodeError {
    /// One event line is longer than the decoder's bound.
    #[error("watch event line exceeds {max} bytes")]
    EventTooLong { max: usize },
}

/// Why the cache refused or failed a write, or could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The write would take the cache over its `--cache-max-bytes` quota.
    #[error("cache quota exceeded: {used} of {max} bytes used, the write needs {needed} more")]
    QuotaExceeded { used: u64, max: u64, needed: u64 },
    /// The filesystem holding the cache is full (ENOSPC).
    #[error("cache disk is full")]
    DiskFull,
    /// The embedded database failed.
    #[error("cache storage error: {0}")]
    Storage(String),
    /// Could not create or open the cache directory or database file.
    #[error("cannot open cache at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    /// The body or event is not the JSON the request implies; nothing was stored.
    #[error("malformed JSON in {what}: {reason}")]
    BadJson { what: &'static str, reason: String },
    /// The request is not one the cache records (delete, exec, watch via `record_response`...).
    #[error("request is not cacheable: {reason}")]
    NotCacheable { reason: &'static str },
    /// The writer thread is gone (cache dropped or crashed).
    #[error("cache writer is closed")]
    Closed,
}

impl CacheError {
    /// Storage errors from redb, turning ENOSPC into [`CacheError::DiskFull`].
    pub(crate) fn from_storage(err: impl Into<redb::Error>) -> CacheError {
        let err: redb::Error = err.into();
        if let redb::Error::Io(io) = &err {
            if is_disk_full(io) {
                return CacheError::DiskFull;
            }
        }
        CacheError::Storage(err.to_string())
    }
}

/// True for "no space left on device" and "quota exceeded" I/O errors.
pub(crate) fn is_disk_full(err: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(err.kind(), std::io::ErrorKind::StorageFull)
        || matches!(err.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}
