//! The revocation deny list: nodes whose certificates issued before a time are refused.
//!
//! `tunnel-server certs revoke --revocation-file F --node N` appends `N <unix time>` to F;
//! the server (`--revocation-file F`) reloads it when it changes (polled) or on SIGHUP,
//! closes the connections of revoked nodes and refuses their handshakes. An entry revokes
//! every certificate of the node whose `notBefore` is at or before the revocation time;
//! certificates the server issues later (re-enrollment with a new token) start after it,
//! so re-enrolling needs no edit of the list and an old, stolen certificate stays refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Largest deny list accepted (about 250,000 entries); a longer file is an
/// error (the previous list stays in force), never silently cut short.
pub const MAX_FILE_LEN: u64 = 16 * 1024 * 1024;

/// The parsed deny list: node name → latest revocation time (Unix seconds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DenyList {
    revoked_at: HashMap<String, i64>,
}

/// A line of the deny list that is not `<node> <unix seconds>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl DenyList {
    /// Parses the file format: `<node> <unix seconds>` per line, `#` comments, blank lines.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut revoked_at = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: String| ParseError {
                line: i + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(node), Some(at), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(err(format!(
                    "expected \"<node> <unix seconds>\", got {line:?}"
                )));
            };
            certs::validate_node_name(node).map_err(|e| err(e.to_string()))?;
            let at: i64 = at
                .parse()
                .map_err(|_| err(format!("{at:?} is not a Unix time in seconds")))?;
            let slot = revoked_at.entry(node.to_owned()).or_insert(at);
            *slot = (*slot).max(at);
        }
        Ok(Self { revoked_at })
    }

    /// When `node` was last revoked, if ever.
    pub fn revoked_at(&self, node: &str) -> Option<i64> {
        self.revoked_at.get(node).copied()
    }

    /// The revocation time that makes a certificate of `node` starting at `not_before` invalid.
    pub fn revokes(&self, node: &str, not_before: i64) -> Option<i64> {
        self.revoked_at(node).filter(|at| not_before <= *at)
    }

    /// Number of revoked nodes.
    pub fn len(&self) -> usize {
        self.revoked_at.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.revoked_at.is_empty()
    }
}

/// Appends a revocation of `node` at `now_unix` to `path` (the `certs revoke` command).
///
/// One `write` of one line with `O_APPEND`, then fsync: concurrent appends never interleave
/// and the server never reads half an entry.
pub fn append(path: &Path, node: &str, now_unix: i64) -> Result<(), RevocationError> {
    certs::validate_node_name(node).map_err(|e| RevocationError::Node(e.to_string()))?;
    let io = |source| RevocationError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    file.write_all(format!("{node} {now_unix}\n").as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)
}

/// Reading or writing the deny list failed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The node name is invalid.
    #[error("{0}")]
    Node(String),
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The deny list file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is longer than [`MAX_FILE_LEN`].
    #[error("{}: the deny list is larger than {limit} bytes; compact it (one line per node is enough)", path.display())]
    TooLarge {
        /// The deny list file.
        path: PathBuf,
        /// [`MAX_FILE_LEN`].
        limit: u64,
    },
    /// The file's content is not a deny list.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The deny list file.
        path: PathBuf,
        /// The offending line.
        #[source]
        source: ParseError,
    },
}

/// Loads the deny list; a missing file is an empty list (nothing revoked yet).
pub fn load(path: &Path) -> Result<DenyList, RevocationError> {
    load_bounded(path, MAX_FILE_LEN)
}

/// [`load`] with a chosen bound: the whole file is read, or it is an error.
fn load_bounded(path: &Path, limit: u64) -> Result<DenyList, RevocationError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DenyList::default()),
        Err(source) => {
            return Err(RevocationError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut text = String::new();
    // One byte past the bound tells "exactly at the limit" from "longer".
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|source| RevocationError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > limit {
        return Err(RevocationError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    DenyList::parse(&text).map_err(|source| RevocationError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The deny list the server consults, replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct Revocations {
    current: RwLock<Arc<DenyList>>,
}

impl Revocations {
    /// Starts with `list`.
    pub fn new(list: DenyList) -> Self {
        Self {
            current: RwLock::new(Arc::new(list)),
        }
    }

    /// The list now in force.
    pub fn current(&self) -> Arc<DenyList> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `list` in force.
    pub fn replace(&self, list: DenyList) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_entries_win_and_comments_are_skipped() {
        let l = DenyList::parse("# revoked\nedge-1 100\n\nedge-2 5 # why\nedge-1 50\n").unwrap();
        assert_eq!(l.revoked_at("edge-1"), Some(100));
        assert_eq!(l.revoked_at("edge-2"), Some(5));
        assert_eq!(l.revoked_at("edge-3"), None);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn only_certificates_from_before_the_revocation_are_revoked() {
        let l = DenyList::parse("edge-1 100").unwrap();
        assert_eq!(l.revokes("edge-1", 99), Some(100));
        assert_eq!(l.revokes("edge-1", 100), Some(100));
        assert_eq!(l.revokes("edge-1", 101), None);
        assert_eq!(l.revokes("edge-2", 0), None);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line) in [
            ("edge-1", 1),
            ("ok 1\nEdge 5", 2),
            ("ok 1\n\nedge x", 3),
            ("a 1 2", 1),
        ] {
            assert_eq!(DenyList::parse(text).unwrap_err().line, line, "{text}");
        }
    }

    #[test]
    fn append_then_load_round_trips_and_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("revocation-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked");
        let _ = std::fs::remove_file(&path);
        assert!(load(&path).unwrap().is_empty());
        append(&path, "edge-1", 7).unwrap();
        append(&path, "edge-2", 9).unwrap();
        assert!(append(&path, "../x", 9).is_err());
        let l = load(&path).unwrap();
        assert_eq!(
            (l.revoked_at("edge-1"), l.revoked_at("edge-2")),
            (Some(7), Some(9))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_past_the_bound_is_an_error_not_a_truncated_list() {
        let dir = std::env::temp_dir().join(format!("revocation-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("revoked");
        let line = "edge-1 1\n";
        std::fs::write(&path, line.repeat(10)).unwrap();
        let exact = (line.len() * 10) as u64;
        assert_eq!(load_bounded(&path, exact).unwrap().len(), 1);
        let err = load_bounded(&path, exact - 1).unwrap_err();
        assert!(matches!(err, RevocationError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("larger than"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
