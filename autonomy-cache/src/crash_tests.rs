//! `kill -9` at arbitrary moments: a child process (this test binary, running the
//! ignored `crash_child` test) records watch events and prints each acknowledged one;
//! the parent kills it with SIGKILL mid-stream, reopens the cache and checks that every
//! acknowledged write is there and every stored object is exactly one that was sent.

use super::tests::{config, pod, req};
use super::*;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const DIR_ENV: &str = "HUB_CACHE_CRASH_DIR";
const START_ENV: &str = "HUB_CACHE_CRASH_START";

fn event_for(i: u64) -> serde_json::Value {
    pod("d", &format!("p{i}"), i + 1, &format!("v{i}"), "n1")
}

#[tokio::test]
#[ignore = "child process of kill_9_loses_no_acknowledged_write"]
async fn crash_child() {
    let (Ok(dir), Ok(start)) = (std::env::var(DIR_ENV), std::env::var(START_ENV)) else {
        return;
    };
    let start: u64 = start.parse().unwrap();
    let cache = AutonomyCache::open(config(std::path::Path::new(&dir))).unwrap();
    let watch = req("GET", "/api/v1/pods?watch=true");
    let mut writes = tokio::task::JoinSet::new();
    for i in start.. {
        if writes.len() >= 64 {
            if let Some(done) = writes.join_next().await {
                println!("acked {}", done.unwrap());
            }
        }
        let line = serde_json::json!({"type": "ADDED", "object": event_for(i)}).to_string();
        let (cache, watch) = (cache.clone(), watch.clone());
        writes.spawn(async move {
            cache
                .record_watch_event("kubelet", &watch, Bytes::from(line))
                .await
                .unwrap();
            i
        });
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = BTreeSet::new();
    for round in 0..5u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_tests::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(DIR_ENV, dir.path())
            .env(START_ENV, (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let kill_after = 150 + round * 97;
        let mut this_round = 0;
        for line in BufReader::new(stdout).lines() {
            let Some(i) = line
                .unwrap()
                .strip_prefix("acked ")
                .map(|n| n.parse::<u64>().unwrap())
            else {
                continue;
            };
            acked.insert(i);
            this_round += 1;
            if this_round >= kill_after {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            this_round >= kill_after,
            "child stopped early in round {round}"
        );

        let cache = AutonomyCache::open(config(dir.path())).unwrap();
        let list = req("GET", "/api/v1/pods");
        let OfflineAnswer::Respond { status: 200, body } =
            cache.offline_answer("kubelet", &list, b"")
        else {
            panic!("round {round}: list not answered");
        };
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut stored = BTreeSet::new();
        for item in list["items"].as_array().unwrap() {
            let name = item["metadata"]["name"].as_str().unwrap();
            let i: u64 = name.trim_start_matches('p').parse().unwrap();
            assert_eq!(
                item,
                &event_for(i),
                "round {round}: {name} is not a version that was sent"
            );
            stored.insert(i);
        }
        let lost: Vec<_> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost: {lost:?}"
        );
    }
}
