//! The node proxy says why it is offline, and says it again when the reason
//! changes (issue 12, finding 11): with `--apiserver tunnel` and the tunnel
//! server stopped, the reason is "not connected to the tunnel server"; once
//! the server is back the probes reach an apiserver whose certificate lacks
//! the expected name, and the log, the `tunnel_agent_hub_offline{reason}`
//! gauge and the `/readyz` body all switch to that reason.

use std::time::{Duration, Instant};

use integration::hub::{HubEnv, HubOptions};
use integration::process::{http_get, metric_value};

const LIMIT: Duration = Duration::from_secs(30);
const NOT_CONNECTED: &str = "not connected to the tunnel server";
const NAME_MISMATCH: &str = "apiserver certificate name mismatch";

fn gauge(env: &HubEnv, reason: &str) -> Option<f64> {
    let metrics = env.agent().metrics().ok()?;
    metric_value(
        &metrics,
        &format!("tunnel_agent_hub_offline{{reason=\"{reason}\"}}"),
    )
}

async fn wait_reason(env: &HubEnv, reason: &str) {
    let started = Instant::now();
    while gauge(env, reason) != Some(1.0) {
        assert!(
            started.elapsed() < LIMIT,
            "offline reason never became {reason:?}:\n{}",
            env.agent_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn readyz(env: &HubEnv) -> (u16, String) {
    http_get(env.agent().admin_addr, "/readyz").unwrap()
}

/// Log lines naming `reason` as why the hub is offline.
fn reason_lines(logs: &str, reason: &str) -> usize {
    logs.lines()
        .filter(|l| l.contains("WARN") && l.contains(&format!("cause=\"{reason}\"")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_reason_is_reported_each_time_it_changes() {
    let mut env = HubEnv::start(HubOptions {
        via_tunnel: true,
        agent_args: vec![
            "--hub-apiserver-server-name=not-in-the-certificate.example".into(),
            "--hub-probe-interval=200ms".into(),
            // The server is killed without a restart: the agent notices at
            // its idle timeout (45 s by default), shortened here.
            "--keepalive=1s".into(),
            "--idle-timeout=4s".into(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    wait_reason(&env, NAME_MISMATCH).await;

    env.cluster.server.proc.kill();
    wait_reason(&env, NOT_CONNECTED).await;
    assert_eq!(
        gauge(&env, NAME_MISMATCH),
        Some(0.0),
        "one reason at a time"
    );
    let (status, body) = readyz(&env);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("hub: offline ({NOT_CONNECTED})")),
        "{body}"
    );

    tokio::task::block_in_place(|| env.cluster.server.restart()).unwrap();
    wait_reason(&env, NAME_MISMATCH).await;
    assert_eq!(gauge(&env, NOT_CONNECTED), Some(0.0));
    let started = Instant::now();
    let body = loop {
        let (status, body) = readyz(&env);
        if status == 200 {
            break body;
        }
        assert!(started.elapsed() < LIMIT, "agent never reconnected: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body.contains(&format!("hub: offline ({NAME_MISMATCH})")),
        "{body}"
    );

    // Every change was logged, and the repeated probe failures (5 a second)
    // were not: each reason at most twice per change in this short run.
    let logs = env.agent_logs();
    let mismatch = reason_lines(&logs, NAME_MISMATCH);
    let tunnel = reason_lines(&logs, NOT_CONNECTED);
    assert!(
        mismatch >= 2,
        "name mismatch logged {mismatch} times:\n{logs}"
    );
    assert!(
        tunnel >= 1,
        "tunnel not connected logged {tunnel} times:\n{logs}"
    );
    assert!(
        mismatch + tunnel <= 6,
        "not rate-limited: {mismatch} + {tunnel} lines:\n{logs}"
    );
}
