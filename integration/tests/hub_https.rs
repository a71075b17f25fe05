//! The node proxy's HTTPS listener for pods, through the real agent binary:
//! a pod's bearer token passes through (and a request without one is not
//! sent with the node's certificate), cached answers offline, and the
//! serving certificate from pre-provisioned files (reloaded) or through the
//! CertificateSigningRequest API against the fake apiserver's signer
//! (created; approved by tunnel-server's `--approve-hub-csrs`, or here where
//! the test must see the time before approval; served, renewed, reused after
//! restarts, offline too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use integration::hub::{HubEnv, HubHttps, HubOptions, HTTPS_IP};
use integration::k8s::Res;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(20);
/// A pod's client, cached as component `my-operator` (--hub-components).
const OPERATOR: &str = "my-operator/v1.2.3 (linux/amd64)";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.service-account.sig";
const CONFIGMAP: &str = "/api/v1/namespaces/default/configmaps/settings";

/// Completes a TLS handshake with the listener as a pod does (trusting only
/// the cluster CA, verifying the IP) and returns the leaf it was shown.
async fn served_leaf(env: &HubEnv) -> Result<CertificateDer<'static>, String> {
    let roots = certs::load_root_store(&env.pki().ca_cert()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(env.https_addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(HTTPS_IP).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
    leaf.map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".into())
}

async fn wait_leaf(
    env: &HubEnv,
    want: impl Fn(&CertificateDer<'static>) -> bool,
) -> CertificateDer<'static> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < LIMIT {
        match served_leaf(env).await {
            Ok(leaf) if want(&leaf) => return leaf,
            Ok(_) => last = "another certificate".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the wanted certificate was not served within {LIMIT:?}: {last}");
}

/// A pod with a token gets the apiserver's answer over the HTTPS listener.
async fn assert_pod_is_answered(env: &HubEnv) {
    let resp = env
        .pod_client(OPERATOR, Some(TOKEN))
        .get("/api/v1/namespaces")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{:?}", resp.body);
}

fn first_cert(path: &std::path::Path) -> CertificateDer<'static> {
    certs::load_cert_chain(path).unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_tokens_pass_through_cached_offline_and_files_reload() {
    let env = HubEnv::start(HubOptions {
        https: HubHttps::Files,
        optional_client_cert: true,
        agent_args: vec!["--hub-components=kubelet,my-operator".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    env.api.upsert(
        &Res::configmaps(),
        json!({"metadata": {"name": "settings", "namespace": "default"}, "data": {"k": "v"}}),
    );
    let (files_cert, _) = env.serving_files.clone().unwrap();
    assert_eq!(served_leaf(&env).await.unwrap(), first_cert(&files_cert));

    let pod = env.pod_client(OPERATOR, Some(TOKEN));
    let online = pod.get(CONFIGMAP).await.unwrap();
    assert_eq!(online.status, 200, "{:?}", online.body);
    let seen = |path: &str| {
        env.api
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path_and_query == path)
            .expect("the request reached the apiserver")
    };
    let sent = seen(CONFIGMAP);
    assert_eq!(
        sent.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(
        sent.client_cn, None,
        "a token request carries no certificate"
    );

    // Without a token: anonymous upstream, never as the node.
    let anonymous = env.pod_client("curl/8.0", None);
    let path = "/api/v1/namespaces/default/configmaps?limit=1";
    let _ = anonymous.get(path).await.unwrap();
    let sent = seen(path);
    assert_eq!((sent.authorization, sent.client_cn), (None, None));
    // The plain listener still lends kubelet the node's certificate.
    let _ = env
        .kubelet()
        .get("/api/v1/namespaces/default/configmaps?limit=2")
        .await
        .unwrap();
    let sent = seen("/api/v1/namespaces/default/configmaps?limit=2");
    assert_eq!(sent.client_cn.as_deref(), Some("system:node:edge-1"));

    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let offline = pod.get(CONFIGMAP).await.unwrap();
    assert_eq!(offline.status, 200);
    assert_eq!(offline.json().unwrap()["data"], json!({"k": "v"}));
    let uncached = env
        .pod_client("curl/8.0", Some(TOKEN))
        .get(CONFIGMAP)
        .await
        .unwrap();
    assert_eq!(
        uncached.status, 503,
        "uncached clients get no offline answers"
    );

    // Replaced in place (new key and certificate): new handshakes get it.
    let before = served_leaf(&env).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (renewed, _) = env.pki().serving("hub-serving", &[HTTPS_IP]).unwrap();
    let want = first_cert(&renewed);
    assert_ne!(want, before);
    let started = Instant::now();
    wait_leaf(&env, |leaf| *leaf == want).await;
    println!(
        "reloaded serving files served after {:?}",
        started.elapsed()
    );
}

/// Writes the Approved condition, as an approver would.
fn approve(env: &HubEnv, name: &str) {
    let mut csr = env
        .api
        .get(&Res::certificate_signing_requests(), None, name)
        .unwrap();
    csr["status"] = json!({"conditions": [{"type": "Approved", "status": "True",
        "reason": "TestApproved", "message": "approved by the test"}]});
    env.api.upsert(&Res::certificate_signing_requests(), csr);
}

fn csrs(env: &HubEnv) -> Vec<Value> {
    env.api.list(&Res::certificate_signing_requests(), None)
}

async fn wait_csrs(env: &HubEnv, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let all = csrs(env);
        if all.len() >= n {
            return all;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{n} CSRs not created within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent getting its serving certificate through the CSR API; with
/// `server_approves`, tunnel-server's `--approve-hub-csrs` approves it,
/// otherwise the test does ([`approve`]).
async fn csr_env(server_approves: bool) -> HubEnv {
    HubEnv::start(HubOptions {
        https: HubHttps::Csr,
        // Pods' requests go upstream without a certificate.
        optional_client_cert: true,
        server_approves_csrs: server_approves,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn signer(env: &HubEnv, lifetime: Duration) -> integration::k8s::signer::SignerHandle {
    let ca = std::fs::read_to_string(env.pki().ca_cert()).unwrap();
    env.api
        .spawn_signer(&ca, &env.pki().ca_key_pem(), lifetime)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_issued_certificate_is_served_and_reused_after_restart() {
    let mut env = csr_env(false).await;
    let _signer = signer(&env, Duration::from_secs(3600));
    let created = wait_csrs(&env, 1).await;
    let csr = &created[0];
    let name = csr["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("edgetunnel-hub-edge-1-"), "{name}");
    assert_eq!(csr["spec"]["signerName"], "kubernetes.io/kubelet-serving");
    assert_eq!(
        csr["spec"]["usages"],
        json!(["digital signature", "server auth"])
    );
    let pem = base64::engine::general_purpose::STANDARD
        .decode(csr["spec"]["request"].as_str().unwrap())
        .unwrap();
    let asked = certs::csr::csr_identity(std::str::from_utf8(&pem).unwrap()).unwrap();
    assert_eq!(asked.node_name, "edge-1");
    assert_eq!(
        asked.node_ips,
        vec![HTTPS_IP.parse::<std::net::IpAddr>().unwrap()]
    );
    let posted = env
        .api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path_and_query.contains("certificatesigningrequests"))
        .unwrap();
    assert_eq!(
        posted.client_cn.as_deref(),
        Some("system:node:edge-1"),
        "sent as the node"
    );

    assert!(
        served_leaf(&env).await.is_err(),
        "no certificate before approval"
    );
    let started = Instant::now();
    approve(&env, &name);
    let leaf = wait_leaf(&env, |_| true).await;
    println!("served {:?} after approval", started.elapsed());
    let id = certs::agent_identity(&leaf).unwrap();
    assert_eq!((id.node_name.as_str(), id.node_ips.len()), ("edge-1", 1));
    assert_pod_is_answered(&env).await;

    let dir = env.cache_dir().join("hub-serving");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("tls.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(first_cert(&dir.join("tls.crt")), leaf);

    env.kill_agent();
    env.start_agent().await.unwrap();
    let again = wait_leaf(&env, |_| true).await;
    assert_eq!(
        again, leaf,
        "the stored certificate is served after a restart"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        csrs(&env).len(),
        1,
        "no new CSR while the stored one is valid"
    );

    // Restarted while the cloud is away: the stored pair is served at once.
    env.relay.cut();
    env.kill_agent();
    env.start_agent().await.unwrap();
    let offline = wait_leaf(&env, |_| true).await;
    assert_eq!(offline, leaf, "served from disk after an offline restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csr_certificate_is_renewed_before_expiry() {
    // tunnel-server's approver approves both CSRs, the first and the renewal.
    let env = csr_env(true).await;
    let lifetime = Duration::from_secs(30);
    let _signer = signer(&env, lifetime);
    let started = Instant::now();
    let first = loop {
        if let Ok(leaf) = served_leaf(&env).await {
            break leaf;
        }
        assert!(started.elapsed() < LIMIT, "no first certificate");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let not_after = certs::not_after_unix(&first).unwrap();
    let not_before = certs::not_before_unix(&first).unwrap();
    let renewed = loop {
        let leaf = served_leaf(&env).await.unwrap();
        if leaf != first {
            break leaf;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            now < not_after,
            "not renewed before the first certificate expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    println!(
        "renewed {} s into a {} s lifetime ({} CSRs)",
        now - not_before,
        not_after - not_before,
        csrs(&env).len()
    );
    assert!(now - not_before >= 20, "renewed at 70-90 %, not at once");
    assert!(certs::not_after_unix(&renewed).unwrap() > not_after);
    let all = csrs(&env);
    assert_eq!(all.len(), 2);
    for csr in &all {
        let reason = &csr["status"]["conditions"][0]["reason"];
        assert_eq!(reason, "EdgeTunnelHubServing", "approved by the server");
    }
}

/// The whole flow with no test standing in: the agent asks, tunnel-server's
/// approver (`--approve-hub-csrs`, kube-rs against the fake) approves, the
/// fake's signer signs, and pod-like clients trusting only the cluster CA
/// (ours, and curl) get the hub's answer over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_approver_approves_the_agents_csr_and_pods_connect() {
    let env = csr_env(true).await;
    let _signer = signer(&env, Duration::from_secs(3600));
    let started = Instant::now();
    let leaf = wait_leaf(&env, |_| true).await;
    println!("served {:?} after the agent started", started.elapsed());
    let all = csrs(&env);
    assert_eq!(all.len(), 1);
    let conditions = &all[0]["status"]["conditions"];
    assert_eq!(conditions[0]["type"], "Approved", "{conditions}");
    assert_eq!(conditions[0]["reason"], "EdgeTunnelHubServing");
    assert_eq!(all[0]["spec"]["username"], "system:node:edge-1");
    let id = certs::agent_identity(&leaf).unwrap();
    assert_eq!(id.node_name, "edge-1");
    assert_pod_is_answered(&env).await;

    // An independent TLS and HTTP client (curl, OpenSSL or GnuTLS, not
    // rustls/hyper) with only the cluster CA accepts the issued certificate.
    let url = format!("https://{}/api/v1/namespaces", env.https_addr);
    let ca = env.pki().ca_cert();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(ca)
            .args(["-H", &format!("Authorization: Bearer {TOKEN}"), &url])
            .output()
    })
    .await
    .unwrap()
    .expect("curl is installed (.ci/run installs it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {stderr}"
    );
}
