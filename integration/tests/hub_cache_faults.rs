//! A damaged cache file never stops the tunnel (issue 12, findings 2 and 3).
//! For each kind of damage the real agent restarts on it: the file is moved
//! aside with its reason, an ERROR is logged, `tunnel_agent_cache_resets_total`
//! counts it, `/readyz` (still 200) says so, a CONNECT through the server
//! reaches an echo service, and the fresh cache answers offline. The cache
//! directory and file end up 0700/0600, tightened from 0755/0644.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration::connect_uds;
use integration::hub::{pod, HubEnv, HubOptions};
use integration::k8s::Res;
use integration::process::{http_get, metric_value};
use integration::services::echo_server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(30);

/// One kind of damage: a name, how to make it from a valid file, and the
/// reason label(s) it may be counted under.
struct Damage {
    name: &'static str,
    reasons: &'static [&'static str],
    apply: fn(&Path, &[u8]),
}

const DAMAGES: &[Damage] = &[
    Damage {
        name: "1 MiB of random bytes",
        reasons: &["corrupt"],
        apply: |file, _| {
            let noise: Vec<u8> = (0..1 << 20).map(|_| rand::random::<u8>()).collect();
            std::fs::write(file, noise).unwrap();
        },
    },
    Damage {
        name: "truncated to 4 KiB",
        reasons: &["corrupt", "panic"],
        apply: |file, valid| std::fs::write(file, &valid[..4096]).unwrap(),
    },
    Damage {
        name: "64 zeroed pages",
        reasons: &["corrupt", "panic"],
        apply: |file, valid| {
            // 64 pages spread evenly over the file after the header page, so
            // live b-tree pages are hit whatever the file's size.
            let mut data = valid.to_vec();
            let pages = data.len() / 4096;
            let step = ((pages - 1) / 64).max(1);
            for page in (1..pages).step_by(step).take(64) {
                data[page * 4096..(page + 1) * 4096].fill(0);
            }
            std::fs::write(file, data).unwrap();
        },
    },
    Damage {
        name: "an old redb format version",
        reasons: &["version"],
        apply: |file, valid| {
            // The first byte of each commit slot (offsets 64 and 192) is the format version.
            let mut data = valid.to_vec();
            data[64] = 1;
            data[192] = 1;
            std::fs::write(file, data).unwrap();
        },
    },
    Damage {
        name: "unreadable (a directory in its place)",
        reasons: &["unreadable"],
        apply: |file, _| std::fs::create_dir_all(file.join("inside")).unwrap(),
    },
];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn aside_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("cache.redb.") && name.contains('-')
        })
        .collect()
}

async fn readyz(env: &HubEnv) -> (u16, String) {
    let addr = env.agent().admin_addr;
    tokio::task::spawn_blocking(move || http_get(addr, "/readyz").unwrap_or((0, String::new())))
        .await
        .unwrap()
}

async fn wait_connected(env: &HubEnv) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(env).await;
        if status == 200 {
            return body;
        }
        assert!(
            started.elapsed() < LIMIT,
            "agent not ready: {status} {body}\n{}",
            env.agent_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn echo_through_tunnel(env: &HubEnv, echo: std::net::SocketAddr) {
    let mut r = connect_uds(&env.cluster.uds(), &echo.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "CONNECT through the server: {}", r.body);
    r.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    r.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_damaged_cache_is_replaced_and_the_tunnel_stays_up() {
    let root = tempfile::tempdir().unwrap();
    let cache_dir = root.path().join("cache");
    // An older agent (or an operator) left the cache world-readable.
    std::fs::create_dir_all(&cache_dir).unwrap();
    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let echo = echo_server().await.unwrap();
    let mut env = HubEnv::start(HubOptions {
        cache_dir: Some(cache_dir.clone()),
        agent_args: vec![format!("--allow={echo}")],
        ..Default::default()
    })
    .await
    .unwrap();
    let file = cache_dir.join("cache.redb");
    assert_eq!(mode(&cache_dir), 0o700, "directory tightened at start");
    assert_eq!(mode(&file), 0o600, "file created private");
    assert!(env.agent_logs().contains("permissions were too open"));

    let pods = Res::pods();
    env.api.upsert(
        &pods,
        pod("default", "p-1", &[("app", "web")], "edge-1", "Running"),
    );
    env.wait_reachable(true, LIMIT).await.unwrap();
    let kubelet = env.kubelet().with_timeout(LIMIT);
    let path = "/api/v1/namespaces/default/pods/p-1";
    assert_eq!(kubelet.get(path).await.unwrap().status, 200);
    env.kill_agent();
    let valid = std::fs::read(&file).unwrap();

    for damage in DAMAGES {
        let what = damage.name;
        for old in aside_files(&cache_dir) {
            let _ = std::fs::remove_file(&old).or_else(|_| std::fs::remove_dir_all(&old));
        }
        std::fs::remove_file(&file).unwrap();
        (damage.apply)(&file, &valid);
        if file.is_file() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }

        env.start_agent()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", env.agent_logs()));
        let body = wait_connected(&env).await;
        assert!(
            body.contains("cache: degraded (cache reset: "),
            "{what}: /readyz said {body:?}"
        );
        echo_through_tunnel(&env, echo).await;

        let moved = aside_files(&cache_dir);
        assert_eq!(moved.len(), 1, "{what}: moved aside: {moved:?}");
        let moved_name = moved[0].file_name().unwrap().to_string_lossy().to_string();
        let counted: Vec<&str> = damage
            .reasons
            .iter()
            .copied()
            .filter(|r| moved_name.starts_with(&format!("cache.redb.{r}-")))
            .collect();
        assert_eq!(counted.len(), 1, "{what}: aside name {moved_name}");
        assert!(
            body.contains(&moved_name),
            "{what}: /readyz {body:?} names the file"
        );
        let started = Instant::now();
        loop {
            let metrics = env.agent().metrics().unwrap();
            let sample = format!(
                "tunnel_agent_cache_resets_total{{reason=\"{}\"}}",
                counted[0]
            );
            if metric_value(&metrics, &sample) == Some(1.0) {
                break;
            }
            assert!(started.elapsed() < LIMIT, "{what}: {sample} not 1");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs = env.agent_logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("ERROR") && l.contains("autonomy cache file unusable")),
            "{what}: no ERROR line"
        );
        if moved[0].is_file() {
            assert_eq!(mode(&moved[0]), 0o600, "{what}: moved file private");
        }
        assert_eq!(mode(&file), 0o600, "{what}: fresh file private");

        // The fresh cache records online and answers offline.
        env.wait_reachable(true, LIMIT).await.unwrap();
        assert_eq!(
            kubelet.get(path).await.unwrap().status,
            200,
            "{what}: online get"
        );
        env.relay.cut();
        env.wait_reachable(false, LIMIT).await.unwrap();
        let offline = kubelet.get(path).await.unwrap();
        assert_eq!(
            offline.status, 200,
            "{what}: offline get from the fresh cache"
        );
        env.relay.restore();
        env.kill_agent();
        eprintln!("{what}: moved to {moved_name}, counted as {}", counted[0]);
    }
}
