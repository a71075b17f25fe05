use super::*;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};
use k8s_openapi::ByteString;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};

const LISTENER: &str = "169.254.2.1";

fn allowed() -> Vec<IpAddr> {
    vec![LISTENER.parse().unwrap()]
}

/// A PEM request with this subject and these SANs.
fn request(cn: &str, orgs: &[&str], sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.subject_alt_names = sans;
    params
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

fn ip(text: &str) -> SanType {
    SanType::IpAddress(text.parse().unwrap())
}

/// The CSR the agent of `node` makes.
fn hub_csr(node: &str) -> CertificateSigningRequest {
    csr(
        &format!("system:node:{node}"),
        request(
            &format!("system:node:{node}"),
            &["system:nodes"],
            vec![ip(LISTENER)],
        ),
    )
}

fn csr(username: &str, request: Vec<u8>) -> CertificateSigningRequest {
    CertificateSigningRequest {
        spec: CertificateSigningRequestSpec {
            signer_name: SIGNER.into(),
            username: Some(username.into()),
            groups: Some(vec!["system:nodes".into(), "system:authenticated".into()]),
            usages: Some(vec![
                "digital signature".into(),
                "key encipherment".into(),
                "server auth".into(),
            ]),
            request: ByteString(request),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn ignored(d: &Decision) -> bool {
    matches!(d, Decision::Ignore(_))
}

#[test]
fn the_agents_csr_is_approved() {
    assert_eq!(
        review(&hub_csr("edge-1"), &allowed()),
        Decision::Approve {
            node: "edge-1".into()
        }
    );
    let mut c = hub_csr("edge-1");
    c.spec.usages = Some(vec!["server auth".into(), "digital signature".into()]);
    assert!(matches!(review(&c, &allowed()), Decision::Approve { .. }));
}

#[test]
fn decided_csrs_are_left() {
    for t in ["Approved", "Denied", "Failed"] {
        let mut c = hub_csr("edge-1");
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: t.into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(review(&c, &allowed()), Decision::Decided, "{t}");
    }
}

#[test]
fn a_foreign_node_name_is_ignored() {
    let c = csr(
        "system:node:edge-1",
        request("system:node:edge-2", &["system:nodes"], vec![ip(LISTENER)]),
    );
    let d = review(&c, &allowed());
    assert!(ignored(&d), "{d:?}");
    // Not a node at all.
    let mut c = hub_csr("edge-1");
    c.spec.username = Some("system:serviceaccount:kube-system:x".into());
    assert!(ignored(&review(&c, &allowed())));
    let mut c = hub_csr("edge-1");
    c.spec.groups = Some(vec!["system:authenticated".into()]);
    assert!(ignored(&review(&c, &allowed())));
    let mut c = hub_csr("edge-1");
    c.spec.username = None;
    assert!(ignored(&review(&c, &allowed())));
}

#[test]
fn subject_organization_must_be_exactly_nodes() {
    for orgs in [
        &[][..],
        &["system:masters"],
        &["system:nodes", "system:masters"],
    ] {
        let c = csr(
            "system:node:edge-1",
            request("system:node:edge-1", orgs, vec![ip(LISTENER)]),
        );
        assert!(ignored(&review(&c, &allowed())), "{orgs:?}");
    }
}

#[test]
fn extra_or_foreign_sans_are_ignored() {
    let cases = vec![
        vec![ip(LISTENER), SanType::DnsName("edge-1".try_into().unwrap())],
        vec![ip(LISTENER), ip("10.0.0.5")],
        vec![ip("10.0.0.5")],
        vec![],
        vec![
            ip(LISTENER),
            SanType::Rfc822Name("a@b.c".try_into().unwrap()),
        ],
        vec![
            ip(LISTENER),
            SanType::URI("spiffe://x/y".try_into().unwrap()),
        ],
    ];
    for sans in cases {
        let c = csr(
            "system:node:edge-1",
            request("system:node:edge-1", &["system:nodes"], sans.clone()),
        );
        let d = review(&c, &allowed());
        assert!(ignored(&d), "{sans:?}: {d:?}");
    }
    // Two listener addresses, both allowed.
    let two: Vec<IpAddr> = vec![LISTENER.parse().unwrap(), "fd00::1".parse().unwrap()];
    let c = csr(
        "system:node:edge-1",
        request(
            "system:node:edge-1",
            &["system:nodes"],
            vec![ip(LISTENER), ip("fd00::1")],
        ),
    );
    assert!(matches!(review(&c, &two), Decision::Approve { .. }));
}

#[test]
fn usages_and_signer_must_be_a_servers() {
    for usages in [
        vec!["digital signature", "server auth", "client auth"],
        vec!["digital signature", "key encipherment"],
        vec!["server auth"],
        vec![],
    ] {
        let mut c = hub_csr("edge-1");
        c.spec.usages = Some(usages.iter().map(|u| (*u).to_owned()).collect());
        assert!(ignored(&review(&c, &allowed())), "{usages:?}");
    }
    let mut c = hub_csr("edge-1");
    c.spec.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into();
    assert!(ignored(&review(&c, &allowed())));
}

#[test]
fn bad_requests_never_panic() {
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"not pem".to_vec(),
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
        b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".to_vec(),
        vec![0xff; 300],
    ];
    let good = request("system:node:edge-1", &["system:nodes"], vec![ip(LISTENER)]);
    let mut truncated = inputs;
    for cut in [10, 40, 80, good.len() / 2, good.len() - 30] {
        let mut t = good[..cut].to_vec();
        t.extend_from_slice(b"\n-----END CERTIFICATE REQUEST-----\n");
        truncated.push(t);
    }
    for bad in truncated {
        let d = review(&csr("system:node:edge-1", bad.clone()), &allowed());
        assert!(ignored(&d), "{:?}: {d:?}", String::from_utf8_lossy(&bad));
    }
}
