//! Crash safety of the autonomy cache: `kill -9` of the agent at 50 random
//! points while a watch streams 1,000 events/s. After each restart (link cut)
//! the cache opens, every cached object is a version upstream sent, and the
//! newest event the client received before the kill is there.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use integration::hub::{HubEnv, HubOptions};
use integration::k8s::Res;

const LIMIT: Duration = Duration::from_secs(30);
const KILLS: usize = 50;

/// A small xorshift generator: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn rv_of(obj: &serde_json::Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("object without a numeric resourceVersion: {obj}"))
}

fn name_of(obj: &serde_json::Value) -> String {
    obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_50_random_points_during_a_1000_events_per_second_watch() {
    let opts = HubOptions {
        agent_args: vec!["--hub-online-after=500ms".into()],
        ..Default::default()
    };
    let mut env = HubEnv::start(opts).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    let churn = env.api.spawn_churn(&pods, "churn", 20, 1000);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(88172645463325252);
    eprintln!("kill points seed {seed}");
    let mut rng = Rng(seed);
    let kubelet = env.kubelet().with_timeout(LIMIT);
    let mut total_events = 0usize;

    for round in 0..KILLS {
        // Online: list then watch, like client-go.
        let list = kubelet.get("/api/v1/namespaces/churn/pods").await.unwrap();
        assert_eq!(list.status, 200, "round {round}: list");
        let list = list.json().unwrap();
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        let mut newest: Option<(String, u64)> = None;
        let mut watch = kubelet
            .watch(&format!(
                "/api/v1/namespaces/churn/pods?watch=1&resourceVersion={rv}"
            ))
            .await
            .unwrap();
        assert_eq!(watch.status, 200, "round {round}: watch");

        // Read for a random time, then kill -9 the agent mid-stream.
        let kill_at = Instant::now() + Duration::from_millis(20 + rng.below(400));
        while Instant::now() < kill_at {
            if let Ok(Some(ev)) = watch.next(Duration::from_millis(50)).await {
                if ev["type"] != "BOOKMARK" {
                    newest = Some((name_of(&ev["object"]), rv_of(&ev["object"])));
                    total_events += 1;
                }
            }
        }
        env.kill_agent();
        // Whatever was already on its way to us still counts as received.
        while let Ok(Some(ev)) = watch.next(Duration::from_secs(2)).await {
            if ev["type"] != "BOOKMARK" {
                newest = Some((name_of(&ev["object"]), rv_of(&ev["object"])));
                total_events += 1;
            }
        }

        // Restart with the link cut, and read the cache through the hub.
        env.relay.cut();
        env.start_agent().await.unwrap();
        env.wait_reachable(false, LIMIT).await.unwrap();
        let sent: HashSet<(String, u64)> =
            churn.events().into_iter().map(|e| (e.name, e.rv)).collect();
        let cached = kubelet.get("/api/v1/namespaces/churn/pods").await.unwrap();
        assert_eq!(cached.status, 200, "round {round}: offline list");
        for item in cached.json().unwrap()["items"].as_array().unwrap() {
            let version = (name_of(item), rv_of(item));
            assert!(
                sent.contains(&version),
                "round {round}: cached {version:?} was never sent"
            );
        }
        if let Some((name, rv)) = &newest {
            let got = kubelet
                .get(&format!("/api/v1/namespaces/churn/pods/{name}"))
                .await
                .unwrap();
            assert_eq!(got.status, 200, "round {round}: offline get {name}");
            let cached_rv = rv_of(&got.json().unwrap());
            assert!(
                cached_rv >= *rv,
                "round {round}: the client saw {name}@{rv} but the cache has {cached_rv}"
            );
        }
        env.relay.restore();
        env.wait_reachable(true, LIMIT).await.unwrap();
    }
    churn.stop();
    eprintln!("{KILLS} kills survived; {total_events} watch events received in total");
    assert!(
        total_events > KILLS * 10,
        "the watch hardly streamed: {total_events} events"
    );
}
