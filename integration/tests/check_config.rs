//! `check-config` of both real binaries: it accepts good configurations (flags and a
//! `--config` file) and refuses broken ones with a message naming the problem: a missing
//! key, a certificate from another CA, a node name the certificate does not carry, an
//! expired certificate.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use integration::process::bin;
use integration::Pki;

/// Runs `binary check-config args...`; returns (success, stdout, stderr).
fn check(binary: &str, args: &[String]) -> (bool, String, String) {
    let out = std::process::Command::new(bin(binary))
        .arg("check-config")
        .args(args)
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a refusal whose message contains every one of `needles`.
fn assert_refused(binary: &str, args: &[String], needles: &[&str]) {
    let (ok, stdout, stderr) = check(binary, args);
    assert!(!ok, "{binary} check-config accepted {args:?}:\n{stdout}");
    assert!(
        stderr.contains("configuration check failed"),
        "no failure line in {stderr:?}"
    );
    for n in needles {
        assert!(stderr.contains(n), "{stderr:?} lacks {n:?}");
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn ips() -> Vec<IpAddr> {
    vec!["10.0.0.1".parse().unwrap()]
}

fn server_args(pki: &Pki) -> Vec<String> {
    vec![
        format!("--tls-cert={}", p(&pki.path("server.crt"))),
        format!("--tls-key={}", p(&pki.path("server.key"))),
        format!("--agent-ca={}", p(&pki.path("ca.crt"))),
    ]
}

fn agent_args(pki: &Pki, cert: &Path, key: &Path, node: &str) -> Vec<String> {
    vec![
        "--server=localhost:8132".into(),
        format!("--node-name={node}"),
        format!("--tls-cert={}", p(cert)),
        format!("--tls-key={}", p(key)),
        format!("--server-ca={}", p(&pki.path("ca.crt"))),
    ]
}

#[test]
fn server_accepts_flags_and_config_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let (ok, stdout, stderr) = check("tunnel-server", &server_args(&pki));
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("tunnel-server configuration OK"),
        "{stdout}"
    );
    assert!(stdout.contains("DNS:localhost, IP:127.0.0.1"), "{stdout}");
    assert!(stdout.contains("QUIC on udp/0.0.0.0:8132"), "{stdout}");

    // The same through --config, as the manifests and the systemd unit use it.
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "tls-cert: {}\ntls-key: {}\nagent-ca: {}\nuds: /run/t.sock\nadmin-addr: 0.0.0.0:8133\n",
            p(&pki.path("server.crt")),
            p(&pki.path("server.key")),
            p(&pki.path("ca.crt"))
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check("tunnel-server", &[format!("--config={}", p(&config))]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("unix socket /run/t.sock"), "{stdout}");
    assert!(stdout.contains("tcp/0.0.0.0:8133"), "{stdout}");

    // Missing key.
    let mut args = server_args(&pki);
    let missing = dir.path().join("nope.key");
    args[1] = format!("--tls-key={}", p(&missing));
    assert_refused("tunnel-server", &args, &["reading", &p(&missing)]);
    // Wrong CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path()).unwrap();
    let mut args = server_args(&pki);
    args[2] = format!("--agent-ca={}", p(&other.path("ca.crt")));
    assert_refused(
        "tunnel-server",
        &args,
        &["not accepted by the CA in", "signed by a different CA"],
    );
    // Flags the serving parse refuses are refused the same way.
    let mut args = server_args(&pki);
    args.push("--proxy-addr=127.0.0.1:8131".into());
    let (ok, _, stderr) = check("tunnel-server", &args);
    assert!(!ok);
    assert!(
        stderr.contains("--proxy-client-ca is required with --proxy-addr"),
        "{stderr}"
    );
}

#[test]
fn agent_accepts_a_matching_certificate_or_an_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let (cert, key) = pki.agent("edge-1", &ips()).unwrap();
    let (ok, stdout, stderr) = check("tunnel-agent", &agent_args(&pki, &cert, &key, "edge-1"));
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("tunnel-agent configuration OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("for node edge-1 (IPs [10.0.0.1]"),
        "{stdout}"
    );
    assert!(stdout.contains("node proxy: off"), "{stdout}");

    // No certificate yet, a token: the agent would enroll.
    let absent = dir.path().join("new");
    let mut args = agent_args(&pki, &absent.join("a.crt"), &absent.join("a.key"), "edge-9");
    args.push("--bootstrap-token=abcdef.0123456789abcdef".into());
    let (ok, stdout, stderr) = check("tunnel-agent", &args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("would enroll as node edge-9 with bootstrap token abcdef"),
        "{stdout}"
    );
    args.pop();
    assert_refused(
        "tunnel-agent",
        &args,
        &["do not exist and there is no --bootstrap-token"],
    );
}

#[test]
fn agent_refuses_missing_key_wrong_ca_name_mismatch_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let (cert, key) = pki.agent("edge-1", &ips()).unwrap();

    // Missing key (the certificate is there).
    let missing = dir.path().join("gone.key");
    assert_refused(
        "tunnel-agent",
        &agent_args(&pki, &cert, &missing, "edge-1"),
        &[&format!("{} exists but {} does not", p(&cert), p(&missing))],
    );
    // A key that is not the certificate's.
    assert_refused(
        "tunnel-agent",
        &agent_args(&pki, &cert, &pki.path("server.key"), "edge-1"),
        &["private key does not match the certificate"],
    );
    // Wrong CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::new(other_dir.path()).unwrap();
    let mut args = agent_args(&pki, &cert, &key, "edge-1");
    args[4] = format!("--server-ca={}", p(&other.path("ca.crt")));
    assert_refused(
        "tunnel-agent",
        &args,
        &[
            &format!("not accepted by the CA in {}", p(&other.path("ca.crt"))),
            "signed by a different CA",
        ],
    );
    // Name mismatch, and an IP the certificate does not carry.
    assert_refused(
        "tunnel-agent",
        &agent_args(&pki, &cert, &key, "edge-2"),
        &["certificate is for node \"edge-1\" but the agent would register as \"edge-2\" (--node-name)"],
    );
    let mut args = agent_args(&pki, &cert, &key, "edge-1");
    args.push("--node-ip=10.0.0.2".into());
    assert_refused(
        "tunnel-agent",
        &args,
        &["--node-ip 10.0.0.2 is not in the certificate"],
    );
    // Expired: a one-second certificate, two seconds later.
    let (short_cert, short_key) = pki
        .agent_valid_for("edge-1", &ips(), Duration::from_secs(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    assert_refused(
        "tunnel-agent",
        &agent_args(&pki, &short_cert, &short_key, "edge-1"),
        &[&format!("{}: certificate expired at", p(&short_cert))],
    );
}
