//! The cache holds what kubelet read (Secrets included), so only the agent's
//! user may read it: the directory is 0700 and its files 0600, created so and
//! tightened at open when an older version or an operator left them looser.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the cache directory.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The mode to set when `mode` grants more than `wanted` (group or other
/// bits), `None` when it is tight enough already.
pub(crate) fn tightened(mode: u32, wanted: u32) -> Option<u32> {
    let mode = mode & 0o7777;
    (mode & !wanted != 0).then_some(wanted)
}

/// Creates `dir` (and parents) as 0700, or tightens it and every file in it.
pub(crate) fn secure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten(dir, DIR_MODE)?;
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            tighten(&path, FILE_MODE)?;
        }
    }
    Ok(())
}

/// Creates `file` empty with mode 0600 if it does not exist (redb then
/// initializes the empty file, keeping the mode).
pub(crate) fn create_private_file(file: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(file)
        .map(drop)
}

/// Best effort 0600 for a file moved aside (it holds the same data).
pub(crate) fn restrict_file(file: &Path) {
    if let Err(err) = tighten(file, FILE_MODE) {
        tracing::warn!(error = %err, path = %file.display(), "cannot restrict a cache file's permissions");
    }
}

/// Sets `wanted` when the mode is looser, with a WARN naming both modes.
fn tighten(path: &Path, wanted: u32) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if let Some(new) = tightened(mode, wanted) {
        tracing::warn!(path = %path.display(), from = format!("{:o}", mode & 0o7777),
            to = format!("{new:o}"), "autonomy cache permissions were too open (it can hold Secrets); tightened");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn only_group_or_other_bits_are_tightened() {
        assert_eq!(tightened(0o40755, DIR_MODE), Some(0o700));
        assert_eq!(tightened(0o100644, FILE_MODE), Some(0o600));
        assert_eq!(tightened(0o100600, FILE_MODE), None);
        assert_eq!(tightened(0o100400, FILE_MODE), None);
        assert_eq!(tightened(0o40700, DIR_MODE), None);
    }

    #[test]
    fn a_new_directory_is_private_and_an_old_one_is_tightened() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/cache");
        secure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        create_private_file(&dir.join("cache.redb")).unwrap();
        assert_eq!(mode(&dir.join("cache.redb")), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("cache.redb");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        secure_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
    }
}
