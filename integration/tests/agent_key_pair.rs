//! A crash in the middle of writing a new key and certificate does not strand
//! the agent (issue 12, finding 8). The files are left as the crash left them
//! (new key beside the old certificate, or nothing but the pending pair after
//! an interrupted enrollment) and the real agent completes the save from
//! `<tls-cert>.pending` and registers, with no new bootstrap token.

use std::path::Path;

use integration::cluster::STARTUP_LIMIT;
use integration::{AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};

/// A freshly issued (cert, key) PEM pair for edge-1.
fn issue(pki: &Pki) -> (String, String) {
    let (cert, key) = pki
        .agent("edge-1", &["127.0.0.1".parse().unwrap()])
        .unwrap();
    (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    )
}

/// Waits until the agent's `/readyz` is 200 (connected to the server).
fn wait_connected(agent: &AgentProc) {
    let started = std::time::Instant::now();
    while !matches!(
        integration::process::http_get(agent.admin_addr, "/readyz"),
        Ok((200, _))
    ) {
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "agent never connected:\n{}",
            agent.proc.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn start_agent(pki: &Pki, server: &ServerProc, cert: &Path, key: &Path) -> AgentProc {
    AgentProc::start_with_files(
        pki,
        server.agent_addr,
        "edge-1",
        cert,
        key,
        AgentOptions::default(),
    )
    .unwrap()
}

#[test]
fn an_interrupted_save_is_completed_from_the_pending_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            ..Default::default()
        },
    )
    .unwrap();
    let (old_cert, _old_key) = issue(&pki);
    let (new_cert, new_key) = issue(&pki);
    let files = dir.path().join("node");
    std::fs::create_dir_all(&files).unwrap();
    let (cert, key) = (files.join("agent.crt"), files.join("agent.key"));
    let pending = files.join("agent.crt.pending");

    // Renewal crashed after the key was replaced, before the certificate was.
    std::fs::write(&key, &new_key).unwrap();
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&pending, format!("{}\n{new_cert}", new_key.trim_end())).unwrap();
    let mut agent = start_agent(&pki, &server, &cert, &key);
    wait_connected(&agent);
    assert!(!pending.exists(), "pending pair left behind");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), new_cert);
    assert!(agent.proc.logs().contains("save was interrupted"));
    agent.proc.kill();

    // Enrollment crashed after writing only the pending pair.
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(&cert).unwrap();
    std::fs::write(&pending, format!("{}\n{new_cert}", new_key.trim_end())).unwrap();
    let agent = start_agent(&pki, &server, &cert, &key);
    wait_connected(&agent);
    assert!(!pending.exists());
    assert_eq!(
        std::fs::read_to_string(&key).unwrap().trim_end(),
        new_key.trim_end()
    );
}
