//! The hub CSR approver (`--approve-hub-csrs`) of the real tunnel-server against the fake
//! apiserver: a CSR made as the agent makes it (created with the node's client certificate,
//! signer kubelet-serving, CN system:node:NAME, O system:nodes, IP SAN = the listener
//! address, serving usages) is approved within seconds; CSRs with a foreign node name, an
//! extra DNS or IP SAN, a client-auth usage or another signer stay unapproved (not denied).

use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use integration::controllers::ControllerEnv;
use integration::k8s::{ApiClient, FakeApiserver, Res};
use integration::process::metric_value;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use serde_json::{json, Value};

const LISTENER_IP: &str = "169.254.2.1";
const SERVING: &str = "kubernetes.io/kubelet-serving";
const APPROVE_LIMIT: Duration = Duration::from_secs(5);

/// A PEM PKCS#10 request with this subject and SANs.
fn request(cn: &str, sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn ip(text: &str) -> SanType {
    SanType::IpAddress(text.parse().unwrap())
}

fn csr(name: &str, signer: &str, pem: &str, usages: &[&str]) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "signerName": signer,
            "request": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
            "usages": usages,
            // The apiserver sets these from the credentials, whatever the body says.
            "username": "system:node:someone-else",
        },
    })
}

fn conditions(api: &FakeApiserver, name: &str) -> Vec<Value> {
    api.get(&Res::certificate_signing_requests(), None, name)
        .and_then(|c| c["status"]["conditions"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_hubs_serving_csrs_are_approved() {
    let env = ControllerEnv::start().await.unwrap();
    let server = env.server(&["--approve-hub-csrs"]).await.unwrap();
    let (api, apki) = (&env.api, &env.apiserver_pki);

    // The node's own credentials, as the agent uses them.
    let (cert, key) = apki
        .client("edge-1", "system:node:edge-1", Some("system:nodes"))
        .unwrap();
    let node = ApiClient::tls(api.addr(), &apki.ca_cert(), Some((&cert, &key))).unwrap();
    let serving = ["digital signature", "key encipherment", "server auth"];
    let me = "system:node:edge-1";
    let dns = SanType::DnsName("edge-1".try_into().unwrap());
    let cases = [
        (
            "hub",
            SERVING,
            request(me, vec![ip(LISTENER_IP)]),
            &serving[..],
        ),
        (
            "foreign-node",
            SERVING,
            request("system:node:edge-2", vec![ip(LISTENER_IP)]),
            &serving[..],
        ),
        (
            "extra-dns",
            SERVING,
            request(me, vec![ip(LISTENER_IP), dns]),
            &serving[..],
        ),
        (
            "extra-ip",
            SERVING,
            request(me, vec![ip(LISTENER_IP), ip("10.0.0.7")]),
            &serving[..],
        ),
        (
            "client-auth",
            SERVING,
            request(me, vec![ip(LISTENER_IP)]),
            &["digital signature", "server auth", "client auth"][..],
        ),
        (
            "other-signer",
            "kubernetes.io/kube-apiserver-client-kubelet",
            request(me, vec![ip(LISTENER_IP)]),
            &["digital signature", "client auth"][..],
        ),
    ];
    let created = Instant::now();
    for (name, signer, pem, usages) in &cases {
        let resp = node
            .request(
                Method::POST,
                "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                Some("application/json"),
                Some(&csr(name, signer, pem, usages)),
            )
            .await
            .unwrap();
        assert_eq!(
            resp.status,
            201,
            "{name}: {}",
            String::from_utf8_lossy(&resp.body)
        );
        let body = resp.json().unwrap();
        assert_eq!(
            body["spec"]["username"], me,
            "the fake takes the requester from the certificate"
        );
        assert_eq!(body["spec"]["groups"][0], "system:nodes");
    }
    loop {
        let c = conditions(api, "hub");
        if c.iter().any(|c| c["type"] == "Approved") {
            assert_eq!(c[0]["reason"], "EdgeTunnelHubServing");
            assert_eq!(c[0]["status"], "True");
            break;
        }
        assert!(
            created.elapsed() < APPROVE_LIMIT,
            "hub CSR not approved within {APPROVE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("hub CSR approved {:?} after creation", created.elapsed());
    // The others were reviewed in the same watch, before or after; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, ..) in &cases[1..] {
        assert!(
            conditions(api, name).is_empty(),
            "{name} was decided: {:?}",
            conditions(api, name)
        );
    }
    let approvals: Vec<_> = api
        .answered()
        .into_iter()
        .filter(|a| a.path_and_query.contains("/approval"))
        .collect();
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0].status, 200);
    let metrics = server.metrics().unwrap();
    let count = |d: &str| {
        metric_value(
            &metrics,
            &format!("tunnel_server_hub_csr_reviews_total{{decision=\"{d}\"}}"),
        )
    };
    assert_eq!(count("approved"), Some(1.0), "{metrics}");
    // Four of the same signer ignored (the other signer is not even watched).
    assert_eq!(count("ignored"), Some(4.0), "{metrics}");
}
