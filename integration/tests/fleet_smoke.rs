//! The fleet bench's code path, small: 50 simulated agents against the real
//! tunnel-server register, answer dials through the server, and all come
//! back after the server is killed with SIGKILL and restarted.

use std::time::Duration;

use integration::fleet::{self, sim::AgentSettings};

#[test]
fn fifty_agents_register_answer_dials_and_return_after_kill_9() {
    integration::process::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let pki = integration::Pki::new(dir.path()).unwrap();
    let cfg = fleet::Config {
        sizes: vec![50],
        idle: Duration::from_secs(2),
        settle: Duration::from_millis(500),
        dials: 20,
        register_limit: Duration::from_secs(30),
        // Several endpoints, so sharing them is covered too.
        per_endpoint: 20,
        // Keep-alives within the 2 s idle window (the default is 10 s).
        agent: AgentSettings::from_agent_flags(&["--keepalive=1s".to_string()], 256).unwrap(),
        server_args: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runs = fleet::run_all(&rt, &pki, &cfg).unwrap();
    let table = fleet::report::markdown(&runs, "smoke");
    eprintln!("{table}");
    let [run] = runs.as_slice() else {
        panic!("one run expected: {runs:?}")
    };
    assert!(run.cold.complete(), "cold start: {:?}", run.cold);
    let idle = run.idle.as_ref().expect("idle window measured");
    assert_eq!(
        idle.registered, 50,
        "agents registered at the end of the idle window"
    );
    assert_eq!(idle.reconnects, 0, "reconnects while idle");
    assert!(
        idle.wire.tx_bytes > 0 && idle.wire.rx_bytes > 0,
        "keep-alives on the wire: {:?}",
        idle.wire
    );
    assert_eq!(
        (run.idle_dials.ok, run.idle_dials.failed),
        (20, 0),
        "idle dials: {:?}",
        run.idle_dials
    );
    assert!(run.restart.complete(), "after kill -9: {:?}", run.restart);
    assert_eq!(run.noticed, 50, "every agent noticed the server was gone");
    assert_eq!(
        run.storm_dials.failed, 0,
        "dials to agents already back: {:?}",
        run.storm_dials
    );
    assert!(
        run.storm_dials.ok > 0,
        "no dial during the storm: {:?}",
        run.storm_dials
    );
    assert!(table.contains("| 50 |"), "{table}");
}
