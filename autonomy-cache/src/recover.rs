//! Faults of the database file never stop the node: a file that cannot be
//! opened is moved aside (`cache.redb.<reason>-<UTC time>`) and a fresh one
//! starts; panics inside redb are contained here and treated the same way.
//!
//! What is worth moving aside is decided by [`classify`]: damage, a format or
//! schema this binary does not read, a file that cannot be read at all. A
//! lock held by another process or a full disk are not the file's fault, so
//! those keep the file (and the cache runs disabled instead).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Moved-aside files kept per directory; older ones are deleted so repeated
/// resets cannot fill the disk.
pub(crate) const KEEP_ASIDE: usize = 3;

/// Why the cache file was replaced by a fresh one (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetReason {
    /// Not a redb file, or damaged (bad magic, checksums, truncated, zeroed pages).
    Corrupt,
    /// A redb format or table schema this binary cannot use.
    Version,
    /// The file cannot be read (not a regular file, I/O errors).
    Unreadable,
    /// redb panicked while opening or using the file.
    Panic,
}

impl ResetReason {
    /// Every reason, for exporting one counter per label value.
    pub const ALL: [ResetReason; 4] = [
        ResetReason::Corrupt,
        ResetReason::Version,
        ResetReason::Unreadable,
        ResetReason::Panic,
    ];

    /// Metric label and file-name infix.
    pub fn label(self) -> &'static str {
        match self {
            ResetReason::Corrupt => "corrupt",
            ResetReason::Version => "version",
            ResetReason::Unreadable => "unreadable",
            ResetReason::Panic => "panic",
        }
    }

    /// Position in [`ResetReason::ALL`].
    pub(crate) fn index(self) -> usize {
        ResetReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// One reset: why, what redb said and where the old file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReset {
    pub reason: ResetReason,
    /// redb's error or panic message.
    pub detail: String,
    /// The old file's new name; `None` if it could not be moved (then it was deleted).
    pub moved_to: Option<PathBuf>,
}

impl std::fmt::Display for CacheReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self.reason.label();
        match &self.moved_to {
            Some(to) => write!(f, "cache reset: {what} file moved to {}", to.display()),
            None => write!(f, "cache reset: {what} file deleted"),
        }
    }
}

/// Opening failed: the error and, if the file is to blame, why to move it aside.
#[derive(Debug)]
pub(crate) struct OpenFailure {
    pub reset: Option<ResetReason>,
    pub message: String,
}

/// Whether an error from opening the file means the file itself is unusable.
pub(crate) fn classify(err: &redb::Error) -> Option<ResetReason> {
    use std::io::ErrorKind;
    match err {
        redb::Error::DatabaseAlreadyOpen => None,
        redb::Error::Io(io) if super::error::is_disk_full(io) => None,
        redb::Error::Io(io)
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            Some(ResetReason::Corrupt)
        }
        redb::Error::Io(_) => Some(ResetReason::Unreadable),
        redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => Some(ResetReason::Version),
        _ => Some(ResetReason::Corrupt),
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}

/// Runs `f`, turning a panic into an [`OpenFailure`] that asks for a reset.
pub(crate) fn contain<T>(f: impl FnOnce() -> Result<T, OpenFailure>) -> Result<T, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(OpenFailure {
            reset: Some(ResetReason::Panic),
            message: format!("redb panicked: {}", panic_message(payload.as_ref())),
        }),
    }
}

/// `cache.redb.corrupt-20261201T231500Z` for a file reset at `unix` seconds.
pub(crate) fn aside_name(file: &str, reason: ResetReason, unix: u64) -> String {
    format!("{file}.{}-{}", reason.label(), utc_stamp(unix))
}

/// `YYYYMMDDTHHMMSSZ` (ISO 8601 basic format) of Unix seconds.
pub(crate) fn utc_stamp(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Renames `path` to its aside name (a `-N` suffix if taken), deleting it if
/// that fails; prunes older aside files. Returns the new name, if moved.
pub(crate) fn move_aside(path: &Path, reason: ResetReason, unix: u64) -> Option<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("cache.redb");
    let base = aside_name(file, reason, unix);
    let target = (0..100)
        .map(|n| match n {
            0 => dir.join(&base),
            n => dir.join(format!("{base}-{n}")),
        })
        .find(|candidate| !candidate.exists())?;
    let moved = match std::fs::rename(path, &target) {
        Ok(()) => Some(target),
        Err(err) => {
            tracing::error!(error = %err, path = %path.display(), "cannot move the cache file aside; deleting it");
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
            None
        }
    };
    if let Some(moved) = &moved {
        super::permissions::restrict_file(moved);
    }
    prune_aside(dir, file, KEEP_ASIDE);
    moved
}

/// Deletes all but the newest `keep` aside files of `file` in `dir`.
fn prune_aside(dir: &Path, file: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefixes: Vec<String> = ResetReason::ALL
        .iter()
        .map(|r| format!("{file}.{}-", r.label()))
        .collect();
    let mut aside: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            prefixes.iter().any(|p| name.starts_with(p.as_str()))
        })
        .map(|e| {
            let at = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (at, e.path())
        })
        .collect();
    aside.sort();
    let excess = aside.len().saturating_sub(keep);
    for (_, old) in aside.into_iter().take(excess) {
        let removed = std::fs::remove_file(&old).or_else(|_| std::fs::remove_dir_all(&old));
        if removed.is_ok() {
            tracing::info!(path = %old.display(), "deleted an old moved-aside cache file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_basic_iso_8601() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        // 2026-12-01 23:15:00 UTC.
        assert_eq!(utc_stamp(1_796_166_900), "20261201T231500Z");
        assert_eq!(
            aside_name("cache.redb", ResetReason::Corrupt, 1_796_166_900),
            "cache.redb.corrupt-20261201T231500Z"
        );
    }

    #[test]
    fn only_file_faults_ask_for_a_reset() {
        let io = |kind| redb::Error::Io(std::io::Error::from(kind));
        use std::io::ErrorKind;
        assert_eq!(classify(&redb::Error::DatabaseAlreadyOpen), None);
        assert_eq!(classify(&io(ErrorKind::StorageFull)), None);
        assert_eq!(
            classify(&io(ErrorKind::InvalidData)),
            Some(ResetReason::Corrupt)
        );
        assert_eq!(
            classify(&io(ErrorKind::IsADirectory)),
            Some(ResetReason::Unreadable)
        );
        assert_eq!(
            classify(&redb::Error::UpgradeRequired(1)),
            Some(ResetReason::Version)
        );
        assert_eq!(
            classify(&redb::Error::Corrupted("x".into())),
            Some(ResetReason::Corrupt)
        );
    }

    #[test]
    fn a_panic_becomes_a_reset_request() {
        let caught = contain::<()>(|| panic!("page 7 out of range"));
        let failure = caught.unwrap_err();
        assert_eq!(failure.reset, Some(ResetReason::Panic));
        assert!(failure.message.contains("page 7 out of range"));
    }

    #[test]
    fn moving_aside_keeps_the_newest_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let mut moved = Vec::new();
        for i in 0..5u64 {
            std::fs::write(&path, format!("damaged {i}")).unwrap();
            // Same second twice: the second gets a suffix instead of overwriting.
            let at = 1_796_166_900 + i / 2;
            moved.push(move_aside(&path, ResetReason::Corrupt, at).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!path.exists());
        assert_eq!(
            moved[1].file_name().unwrap(),
            "cache.redb.corrupt-20261201T231500Z-1"
        );
        let left: Vec<_> = moved.iter().filter(|p| p.exists()).collect();
        assert_eq!(left, moved[2..].iter().collect::<Vec<_>>());
        assert_eq!(std::fs::read_to_string(&moved[4]).unwrap(), "damaged 4");
    }
}
