//! Disk full: with the cache on a small tmpfs, requests keep being proxied,
//! the cache stops growing and says so, and what it stored still answers offline.

use std::time::Duration;

use integration::hub::{item_names, pod, HubEnv, HubOptions, Tmpfs, KUBELET};
use integration::k8s::Res;
use integration::process::metric_value;

const LIMIT: Duration = Duration::from_secs(30);

fn config_map(name: &str, bytes: usize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "fill"},
        "data": {"blob": "x".repeat(bytes)},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_proxying_and_serves_what_was_stored() {
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "!!!!!!!! SKIPPED hub disk-full test: {why} (needs root to mount a tmpfs) !!!!!!!!"
            );
            return;
        }
    };
    let env = HubEnv::start(HubOptions {
        cache_dir: Some(fs.path.join("cache")),
        ..Default::default()
    })
    .await
    .unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    for i in 0..10 {
        env.api.upsert(
            &pods,
            pod(
                "default",
                &format!("p-{i}"),
                &[("app", "web")],
                "edge-1",
                "Running",
            ),
        );
    }
    let kubelet = env.kubelet();
    let stored = kubelet
        .get("/api/v1/namespaces/default/pods")
        .await
        .unwrap();
    assert_eq!(stored.status, 200);

    // Fill the disk: 100 config maps of 64 KiB, each fetched and listed by kubelet.
    let cms = Res::configmaps();
    let direct = env.direct(KUBELET);
    let mut used_after = Vec::new();
    for round in 0..4 {
        for i in 0..25 {
            let name = format!("cm-{round}-{i}");
            env.api.upsert(&cms, config_map(&name, 64 * 1024));
            let path = format!("/api/v1/namespaces/fill/configmaps/{name}");
            let via_hub = kubelet.get(&path).await.unwrap();
            assert_eq!(via_hub.status, 200, "{path} not proxied with a full disk");
            assert_eq!(
                via_hub.body,
                direct.get(&path).await.unwrap().body,
                "{path}"
            );
        }
        let list = kubelet
            .get("/api/v1/namespaces/fill/configmaps")
            .await
            .unwrap();
        assert_eq!(list.status, 200, "list not proxied with a full disk");
        tokio::time::sleep(Duration::from_millis(1100)).await; // the gauges refresh every second
        let metrics = env.agent().metrics().unwrap();
        let cached = metric_value(&metrics, "tunnel_agent_cache_bytes").unwrap_or(-1.0);
        let refused = metric_value(&metrics, "tunnel_agent_cache_refused_writes").unwrap_or(-1.0);
        used_after.push((fs.used_bytes(), cached as u64, refused as u64));
    }
    eprintln!("(tmpfs bytes, cache bytes, refused writes) after each round: {used_after:?}");
    let logs = env.agent_logs();
    assert!(
        logs.contains("autonomy cache full") || logs.contains("autonomy cache failure"),
        "the cache did not say it is full:\n{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
    // (tmpfs bytes, cache bytes, refused writes) per round: the cache held
    // data, refused writes once the disk was full, and stopped growing.
    let (first, a, b) = (used_after[0], used_after[2], used_after[3]);
    assert!(first.1 > 0, "nothing cached: {used_after:?}");
    assert!(b.2 > 0, "no refused writes reported: {used_after:?}");
    assert!(
        b.1 <= a.1 + 128 * 1024,
        "cache still growing on a full disk: {used_after:?}"
    );
    assert!(
        b.0 <= a.0 + 64 * 1024,
        "disk use still growing: {used_after:?}"
    );

    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let offline = kubelet
        .get("/api/v1/namespaces/default/pods")
        .await
        .unwrap();
    assert_eq!(
        offline.status,
        200,
        "{}",
        String::from_utf8_lossy(&offline.body)
    );
    assert_eq!(
        item_names(&offline.json().unwrap()),
        item_names(&stored.json().unwrap())
    );
}
