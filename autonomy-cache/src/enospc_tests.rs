//! A real full disk: the cache on a small tmpfs (needs root to mount; skipped loudly
//! otherwise). 8 MiB, not 2: a fresh redb file with quick-repair state already takes
//! about 2.6 MiB of real space.

use super::tests::{config, pod, req};
use super::*;
use std::process::Command;

/// Unmounts the tmpfs when the test ends, pass or fail.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .ok()?;
    status.success().then(|| Tmpfs(dir.to_path_buf()))
}

#[tokio::test]
async fn full_disk_refuses_writes_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = mount_tmpfs(dir.path(), "8m") else {
        eprintln!(
            "SKIPPED full_disk_refuses_writes_and_keeps_serving: cannot mount tmpfs (not root?)"
        );
        return;
    };
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let watch = req("GET", "/api/v1/pods?watch=true");
    let padding = "x".repeat(3000);
    let mut stored = 0u64;
    let mut disk_full = 0;
    let mut next = 0u64;
    while disk_full < 5 && next < 20_000 {
        // Many writes in flight, like a busy watch: batches share commits.
        let mut writes = tokio::task::JoinSet::new();
        for i in next..next + 64 {
            let mut obj = pod("d", &format!("p{i}"), i + 1, "web", "n1");
            obj["metadata"]["annotations"] = serde_json::json!({ "pad": padding });
            let line = Bytes::from(serde_json::json!({"type": "ADDED", "object": obj}).to_string());
            let (cache, watch) = (cache.clone(), watch.clone());
            writes.spawn(async move { cache.record_watch_event("kubelet", &watch, line).await });
        }
        next += 64;
        while let Some(result) = writes.join_next().await {
            match result.unwrap() {
                Ok(()) => stored += 1,
                Err(CacheError::DiskFull) => disk_full += 1,
                Err(other) => panic!("expected DiskFull, got {other}"),
            }
        }
    }
    eprintln!("stored {stored} events before ENOSPC; {disk_full} refused");
    assert!(
        disk_full >= 5,
        "8 MiB never filled up after {stored} writes"
    );
    assert!(stored > 0);
    assert!(cache.stats().refused_writes >= 5);
    // What was stored is still served.
    let list = req("GET", "/api/v1/pods");
    let OfflineAnswer::Respond { status, body } = cache.offline_answer("kubelet", &list, b"")
    else {
        panic!("list answered HoldWatch");
    };
    assert_eq!(status, 200, "{body:?}");
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let first = listed["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let get = req("GET", &format!("/api/v1/namespaces/d/pods/{first}"));
    match cache.offline_answer("kubelet", &get, b"") {
        OfflineAnswer::Respond { status, body } => assert_eq!(status, 200, "{body:?}"),
        OfflineAnswer::HoldWatch => panic!("get answered HoldWatch"),
    }
    drop(cache);
    // And the database opens again, with every acknowledged write present.
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let OfflineAnswer::Respond { status, body } = cache.offline_answer("kubelet", &list, b"")
    else {
        panic!("list answered HoldWatch");
    };
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(list["items"].as_array().unwrap().len() as u64 >= stored);
}
