//! Bad input from upstream: malformed JSON, a 100 MB response, a watch that
//! never ends. Clear errors, bounded memory, no panic, a cache never poisoned.
//! (Paths with `..` are in hub_online.rs.)

use std::time::{Duration, Instant};

use integration::hub::{get_counting, item_names, pod, HubEnv, KUBELET};
use integration::k8s::{Fault, Res};

const LIMIT: Duration = Duration::from_secs(30);

/// Agent RSS must stay under this while a 100 MB response streams through
/// (the hub buffers at most 64 MiB of one response for the cache).
const RSS_LIMIT_KIB: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_passes_through_and_does_not_poison_the_cache() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    for i in 0..5 {
        env.api.upsert(
            &pods,
            pod("default", &format!("p-{i}"), &[], "edge-1", "Running"),
        );
    }
    let kubelet = env.kubelet();
    let path = "/api/v1/namespaces/default/pods";
    let good = kubelet.get(path).await.unwrap();
    assert_eq!(good.status, 200);

    env.api.set_fault(Fault::MalformedJson {
        path_prefix: path.to_string(),
    });
    let bad = kubelet.get(path).await.unwrap();
    assert_eq!(bad.status, 200, "upstream's answer passes through");
    assert!(bad.json().is_err(), "the body is the malformed one");
    env.api.set_fault(Fault::None);

    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let offline = kubelet.get(path).await.unwrap();
    assert_eq!(offline.status, 200);
    assert_eq!(
        item_names(&offline.json().expect("offline answer is valid JSON")),
        item_names(&good.json().unwrap())
    );
    let logs = env.agent_logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_response_streams_with_bounded_memory_and_is_not_cached() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let path = "/api/v1/namespaces/big/configmaps";
    env.api.set_fault(Fault::HugeBody {
        path_prefix: path.to_string(),
        bytes: 100_000_000,
    });
    let before = env.agent_rss_kib().unwrap();
    let fetch = tokio::spawn(get_counting(env.hub_addr, path, KUBELET));
    let mut peak = before;
    while !fetch.is_finished() {
        peak = peak.max(env.agent_rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, bytes) = fetch.await.unwrap().unwrap();
    eprintln!("100 MB through the hub: status {status}, {bytes} bytes, agent RSS {before} KiB -> peak {peak} KiB");
    assert_eq!(status, 200);
    assert!(bytes >= 100_000_000, "only {bytes} bytes arrived");
    assert!(peak < RSS_LIMIT_KIB, "agent RSS peaked at {peak} KiB");
    env.api.set_fault(Fault::None);
    let logs = env.agent_logs();
    assert!(
        logs.contains("not cached"),
        "no log line about the oversized response:\n{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");

    // Offline, the huge answer is not served from the cache.
    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let offline = env.kubelet().get(path).await.unwrap();
    assert!(
        offline.body.len() < 1 << 20,
        "{} bytes served offline",
        offline.body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_never_ends_is_bounded_and_ends_when_offline() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    env.api.set_fault(Fault::WatchNeverEnds);
    let pods = Res::pods();
    let kubelet = env.kubelet();
    let mut watch = kubelet
        .watch("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1")
        .await
        .unwrap();
    assert_eq!(watch.status, 200);
    let started = Instant::now();
    let mut events = 0;
    while started.elapsed() < Duration::from_secs(4) {
        env.api.upsert(
            &pods,
            pod("default", &format!("n-{events}"), &[], "edge-1", "Running"),
        );
        let ev = watch.next(LIMIT).await.unwrap();
        assert!(ev.is_some(), "watch ended although upstream keeps it open");
        events += 1;
    }
    let rss = env.agent_rss_kib().unwrap();
    eprintln!("never-ending watch: {events} events in 4 s, agent RSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB);
    // Other requests are unaffected.
    assert_eq!(
        kubelet
            .get("/api/v1/namespaces/default/pods")
            .await
            .unwrap()
            .status,
        200
    );
    // Offline ends it, so the client re-lists from the cache.
    env.relay.cut();
    loop {
        match watch.next(LIMIT).await.unwrap() {
            None => break,
            Some(_) => continue,
        }
    }
    assert!(!env.agent_logs().contains("panicked"));
}
