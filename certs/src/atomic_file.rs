//! Writing certificate, key and token files atomically with exact permissions.
//!
//! Every file the crate writes goes through [`write_atomic`]: temp file, fsync, rename, so a
//! crash or a concurrent reader never sees half a certificate.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::CertError;

/// Permission bits for certificate files (world-readable).
pub const CERT_MODE: u32 = 0o644;
/// Permission bits for private key files (owner only).
pub const KEY_MODE: u32 = 0o600;

/// Writes `contents` to a temporary file next to `path`, then renames it into place.
///
/// Readers never see a half-written file, and a key is never readable by others, even
/// briefly: the temp file is created with `mode` already applied.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let write_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CertError::Write { path: p, source }
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // pid + counter: concurrent writers (two processes, or two tasks) never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{file_name}.tmp.{}.{n}", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(&tmp)(e)),
    }
    let result = (|| {
        let mut file = create_with_mode(&tmp, mode).map_err(write_err(&tmp))?;
        file.write_all(contents).map_err(write_err(&tmp))?;
        // The umask may have narrowed `mode` at creation; state it exactly.
        set_mode(&file, mode).map_err(write_err(&tmp))?;
        file.sync_all().map_err(write_err(&tmp))?;
        fs::rename(&tmp, path).map_err(write_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file that is never, even momentarily, more permissive than `mode`.
#[cfg(unix)]
fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

/// Creates a new file (no Unix permissions on this platform).
#[cfg(not(unix))]
fn create_with_mode(path: &Path, _mode: u32) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Sets the exact permission bits, regardless of umask.
#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// No-op where Unix permissions do not exist.
#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) -> std::io::Result<()> {
    Ok(())
}
