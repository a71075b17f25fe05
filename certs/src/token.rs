//! Bootstrap tokens: single-use, expiring credentials that let a new node get its certificate.
//!
//! Like kubeadm's, a token is `<id>.<secret>` (`[a-z0-9]{6}.[a-z0-9]{16}`). The server's
//! token directory holds one file per id, `<id>.json`, with the SHA-256 of the secret, the
//! node name and IPs the token allows, and its expiry; never the secret. Using a token
//! renames its file to `<id>.used`: the rename is atomic, so of two concurrent uses only
//! one can succeed, and a later use is told "already used" rather than "unknown".

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{write_atomic, KEY_MODE};
use crate::node::NodeIdentity;

/// Characters of a token id.
pub const TOKEN_ID_LEN: usize = 6;
/// Characters of a token secret.
pub const TOKEN_SECRET_LEN: usize = 16;
/// Largest token record file read (they are about 200 bytes).
const MAX_RECORD_LEN: u64 = 64 * 1024;
/// The token alphabet: lowercase letters and digits.
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A bootstrap token as the agent holds it. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<secret>)", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    /// The full `<id>.<secret>` form, to print for the operator or send to the server.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl BootstrapToken {
    /// Draws a new random token from the crypto provider's CSPRNG.
    pub fn generate() -> Result<Self, TokenError> {
        const LEN: usize = TOKEN_ID_LEN + TOKEN_SECRET_LEN;
        let mut text = String::with_capacity(LEN);
        let mut bytes = [0u8; 32];
        while text.len() < LEN {
            crate::tls::provider()
                .secure_random
                .fill(&mut bytes)
                .map_err(|_| TokenError::Random)?;
            // Rejection sampling: 252 = 7 * 36, so bytes below it map to the alphabet uniformly.
            for b in bytes.iter().filter(|b| **b < 252).take(LEN - text.len()) {
                text.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
        let (id, secret) = text.split_at(TOKEN_ID_LEN);
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Parses `<id>.<secret>`, refusing anything else (it also names files on the server).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        let malformed = || TokenError::Malformed;
        let (id, secret) = text.split_once('.').ok_or_else(malformed)?;
        let ok = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
        if !ok(id, TOKEN_ID_LEN) || !ok(secret, TOKEN_SECRET_LEN) {
            return Err(malformed());
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The public half, which names the token's file and appears in logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hex SHA-256 of the secret: what the server stores and compares.
    pub fn secret_sha256(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

/// What the server stores for one token (`<token-dir>/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token id.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// The node the token may enroll.
    pub node: String,
    /// The IPs that node's certificate will carry.
    pub ips: Vec<IpAddr>,
    /// Unix time after which the token is refused.
    pub expires_unix: i64,
}

impl TokenRecord {
    /// The identity a certificate issued with this token carries.
    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            node_name: self.node.clone(),
            node_ips: self.ips.clone(),
        }
    }
}

/// Why a token was refused or the token store failed; messages are shown to the agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The text is not `<id>.<secret>`.
    #[error("malformed bootstrap token: expected <6 chars>.<16 chars> of [a-z0-9]")]
    Malformed,
    /// No token with this id exists.
    #[error("unknown bootstrap token {id}")]
    Unknown {
        /// The token id.
        id: String,
    },
    /// The token was already used to enroll.
    #[error("bootstrap token {id} was already used; create a new one")]
    AlreadyUsed {
        /// The token id.
        id: String,
    },
    /// The token's expiry has passed.
    #[error("bootstrap token {id} expired at unix time {expired_unix}; create a new one")]
    Expired {
        /// The token id.
        id: String,
        /// When it expired.
        expired_unix: i64,
    },
    /// The id exists but the secret is wrong.
    #[error("bootstrap token {id}: wrong secret")]
    WrongSecret {
        /// The token id.
        id: String,
    },
    /// A token with this id already exists (when creating).
    #[error("bootstrap token {id} already exists")]
    Exists {
        /// The token id.
        id: String,
    },
    /// The CSPRNG failed.
    #[error("generating a bootstrap token: the random number generator failed")]
    Random,
    /// The token directory could not be read or written.
    #[error("token store {path}: {reason}")]
    Store {
        /// The file or directory involved.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

impl TokenError {
    /// True when retrying with the same token cannot succeed (everything but store I/O).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, TokenError::Store { .. } | TokenError::Random)
    }
}

/// Checks a presented token against its record at `now_unix` (pure; no file access).
pub fn check_token(
    record: &TokenRecord,
    token: &BootstrapToken,
    now_unix: i64,
) -> Result<(), TokenError> {
    // Compare the secret first: an expiry answer would confirm that an id exists.
    if record.id != token.id || record.secret_sha256 != token.secret_sha256() {
        return Err(TokenError::WrongSecret {
            id: token.id.clone(),
        });
    }
    if now_unix >= record.expires_unix {
        return Err(TokenError::Expired {
            id: token.id.clone(),
            expired_unix: record.expires_unix,
        });
    }
    Ok(())
}

/// The server's token directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

impl TokenStore {
    /// A store over `dir` (created on the first [`TokenStore::create`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Writes a new token's record (mode 0600); fails if the id is taken.
    pub fn create(&self, record: &TokenRecord) -> Result<PathBuf, TokenError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| store_err(&self.dir, e))?;
        let path = self.active_path(&record.id);
        if path.exists() || self.used_path(&record.id).exists() {
            return Err(TokenError::Exists {
                id: record.id.clone(),
            });
        }
        let json = serde_json::to_vec_pretty(record).map_err(|e| store_err(&path, e))?;
        write_atomic(&path, &json, KEY_MODE).map_err(|e| store_err(&path, e))?;
        Ok(path)
    }

    /// The record of token `id`: unknown, already used, or its content.
    pub fn lookup(&self, id: &str) -> Result<TokenRecord, TokenError> {
        // Parsed tokens have safe ids; this guards callers that pass raw text.
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(TokenError::Malformed);
        }
        let path = self.active_path(id);
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if self.used_path(id).exists() {
                    TokenError::AlreadyUsed { id: id.to_owned() }
                } else {
                    TokenError::Unknown { id: id.to_owned() }
                });
            }
            Err(e) => return Err(store_err(&path, e)),
        };
        serde_json::from_str(&text).map_err(|e| store_err(&path, e))
    }

    /// Marks token `id` used (atomic rename); fails with `AlreadyUsed` if another use won.
    pub fn consume(&self, id: &str) -> Result<(), TokenError> {
        match std::fs::rename(self.active_path(id), self.used_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TokenError::AlreadyUsed { id: id.to_owned() })
            }
            Err(e) => Err(store_err(&self.dir, e)),
        }
    }

    fn active_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn used_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.used"))
    }
}

/// Reads a small file, refusing one larger than [`MAX_RECORD_LEN`].
fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(MAX_RECORD_LEN).read_to_string(&mut text)?;
    Ok(text)
}

fn store_err(path: &Path, e: impl fmt::Display) -> TokenError {
    TokenError::Store {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Lowercase hex SHA-256.
fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    fn record(token: &BootstrapToken, expires_unix: i64) -> TokenRecord {
        TokenRecord {
            id: token.id().to_owned(),
            secret_sha256: token.secret_sha256(),
            node: "edge-1".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            expires_unix,
        }
    }

    #[test]
    fn generated_tokens_parse_back_and_differ() {
        let a = BootstrapToken::generate().unwrap();
        let b = BootstrapToken::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(BootstrapToken::parse(&a.to_string()).unwrap(), a);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "abcdef",
            "abcdef.0123456789abcde",
            "ABCDEF.0123456789abcdef",
            "../../x.0123456789abcdef",
            "abcdef.0123456789abcdef.x",
        ] {
            assert_eq!(
                BootstrapToken::parse(bad),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn check_refuses_wrong_secret_and_expired() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let r = record(&t, 100);
        assert_eq!(check_token(&r, &t, 99), Ok(()));
        assert!(matches!(
            check_token(&r, &t, 100),
            Err(TokenError::Expired { .. })
        ));
        let wrong = BootstrapToken::parse("abcdef.0123456789abcdee").unwrap();
        assert!(matches!(
            check_token(&r, &wrong, 0),
            Err(TokenError::WrongSecret { .. })
        ));
    }

    #[test]
    fn store_keeps_only_the_hash_and_tokens_are_single_use() {
        let dir = TempDir::new();
        let store = TokenStore::new(dir.path().join("tokens"));
        let t = BootstrapToken::generate().unwrap();
        let path = store.create(&record(&t, i64::MAX)).unwrap();
        let on_disk = std::fs::read_to_string(&path).unwrap();
        assert!(!on_disk.contains(&t.secret) && on_disk.contains(&t.secret_sha256()));
        assert!(matches!(
            store.create(&record(&t, 1)),
            Err(TokenError::Exists { .. })
        ));
        assert_eq!(store.lookup(t.id()).unwrap().node, "edge-1");
        store.consume(t.id()).unwrap();
        assert!(matches!(
            store.consume(t.id()),
            Err(TokenError::AlreadyUsed { .. })
        ));
        assert!(matches!(
            store.lookup(t.id()),
            Err(TokenError::AlreadyUsed { .. })
        ));
        assert!(matches!(
            store.lookup("zzzzzz"),
            Err(TokenError::Unknown { .. })
        ));
    }

    #[test]
    fn concurrent_consumers_get_exactly_one_success() {
        let dir = TempDir::new();
        let store = TokenStore::new(dir.path());
        let t = BootstrapToken::generate().unwrap();
        store.create(&record(&t, i64::MAX)).unwrap();
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.consume(t.id()).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(wins, 1);
    }
}
