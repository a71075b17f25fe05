//! Damaged cache files: each kind of damage is moved aside with its reason and a
//! fresh cache works; a panicking writer resets the cache instead of ending the
//! process; a lock held by another process is not the file's fault.

use super::tests::{answer, config, pod, req};
use super::*;
use std::path::Path;

/// Bytes of a valid cache holding one pod (for truncating, zeroing, re-versioning).
async fn valid_file(dir: &Path) -> Vec<u8> {
    let cache = AutonomyCache::open(config(dir)).unwrap();
    let get = req("GET", "/api/v1/namespaces/d/pods/p1");
    let body = Bytes::from(pod("d", "p1", 5, "web", "n1").to_string());
    cache.record_response("kubelet", &get, body).await.unwrap();
    drop(cache);
    std::fs::read(dir.join("cache.redb")).unwrap()
}

/// Files in `dir` whose name starts with `prefix`.
fn aside(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect()
}

/// Opens `dir`, expecting one reset for `reason`, then checks the fresh cache works.
async fn assert_resets(dir: &Path, reason: ResetReason) {
    let cache = AutonomyCache::open(config(dir)).unwrap();
    let CacheHealth::Reset(reset) = cache.health() else {
        panic!("no reset reported: {:?}", cache.health());
    };
    assert_eq!(reset.reason, reason, "{}", reset.detail);
    let moved = reset.moved_to.clone().expect("file moved aside");
    assert!(moved.exists());
    let name = format!("cache.redb.{}-", reason.label());
    assert_eq!(aside(dir, &name), vec![moved]);
    assert_eq!(cache.stats().resets[reason.index()], 1);
    let get = req("GET", "/api/v1/namespaces/d/pods/p2");
    let body = Bytes::from(pod("d", "p2", 9, "web", "n1").to_string());
    cache.record_response("kubelet", &get, body).await.unwrap();
    assert_eq!(answer(&cache, "kubelet", &get, b"").0, 200);
}

#[tokio::test]
async fn random_bytes_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let noise: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
    std::fs::write(dir.path().join("cache.redb"), noise).unwrap();
    assert_resets(dir.path(), ResetReason::Corrupt).await;
}

#[tokio::test]
async fn a_truncated_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_file(dir.path()).await;
    std::fs::write(dir.path().join("cache.redb"), &file[..4096]).unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    assert!(matches!(cache.health(), CacheHealth::Reset(_)));
}

#[tokio::test]
async fn zeroed_pages_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = valid_file(dir.path()).await;
    let end = file.len().min(65 * 4096);
    file[4096..end].fill(0);
    std::fs::write(dir.path().join("cache.redb"), &file).unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    assert!(
        matches!(cache.health(), CacheHealth::Reset(_)),
        "{:?}",
        cache.health()
    );
}

/// redb's commit slots start at 64 and 192; their first byte is the format version.
pub(crate) fn set_format_version(file: &mut [u8], version: u8) {
    file[64] = version;
    file[192] = version;
}

#[tokio::test]
async fn an_old_format_version_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = valid_file(dir.path()).await;
    set_format_version(&mut file, 1);
    std::fs::write(dir.path().join("cache.redb"), &file).unwrap();
    assert_resets(dir.path(), ResetReason::Version).await;
}

#[tokio::test]
async fn an_unreadable_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    // Root reads any mode, so "unreadable" is a directory where the file should be.
    std::fs::create_dir_all(dir.path().join("cache.redb/inside")).unwrap();
    assert_resets(dir.path(), ResetReason::Unreadable).await;
}

#[tokio::test]
async fn a_locked_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let first = AutonomyCache::open(config(dir.path())).unwrap();
    let second = AutonomyCache::open(config(dir.path()));
    assert!(second.is_err(), "two caches on one file");
    assert!(aside(dir.path(), "cache.redb.").is_empty());
    assert_eq!(first.health(), CacheHealth::Ok);
}

#[tokio::test]
async fn a_panicking_writer_resets_the_cache_and_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let get = req("GET", "/api/v1/namespaces/d/pods/p1");
    let body = Bytes::from(pod("d", "p1", 5, "web", "n1").to_string());
    cache.inject_writer_panic();
    let lost = cache.record_response("kubelet", &get, body.clone()).await;
    assert_eq!(lost, Err(CacheError::Closed));
    // The waiter learns of the lost write while the writer is still resetting.
    let started = std::time::Instant::now();
    let reset = loop {
        if let CacheHealth::Reset(reset) = cache.health() {
            break reset;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reset after a writer panic"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reset.reason, ResetReason::Panic);
    assert!(reset.detail.contains("injected panic"), "{}", reset.detail);
    cache.record_response("kubelet", &get, body).await.unwrap();
    assert_eq!(answer(&cache, "kubelet", &get, b"").0, 200);
}

#[tokio::test]
async fn a_disabled_cache_answers_503_and_stores_nothing() {
    let cache = AutonomyCache::disabled("cannot create /x".into());
    let get = req("GET", "/api/v1/namespaces/d/pods/p1");
    let (status, body) = answer(&cache, "kubelet", &get, b"");
    assert_eq!(status, 503);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("cannot create /x"));
    let body = Bytes::from(pod("d", "p1", 5, "web", "n1").to_string());
    assert!(cache.record_response("kubelet", &get, body).await.is_err());
    assert_eq!(
        cache.health(),
        CacheHealth::Disabled("cannot create /x".into())
    );
}

#[test]
fn cache_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let _cache = AutonomyCache::open(config(&cache_dir)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache_dir), 0o700);
    assert_eq!(mode(&cache_dir.join("cache.redb")), 0o600);
}
