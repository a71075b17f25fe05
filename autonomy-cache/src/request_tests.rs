use super::*;

fn resource(info: &RequestInfo) -> (&str, &str, Option<&str>, &str, Option<&str>, Option<&str>) {
    match &info.kind {
        RequestKind::Resource {
            group,
            version,
            namespace,
            resource,
            name,
            subresource,
        } => (
            group,
            version,
            namespace.as_deref(),
            resource,
            name.as_deref(),
            subresource.as_deref(),
        ),
        RequestKind::NonResource => panic!("{} parsed as non-resource", info.path),
    }
}

#[test]
fn core_namespaced_get_and_list() {
    let get = RequestInfo::parse("GET", "/api/v1/namespaces/kube-system/pods/dns-1").unwrap();
    assert_eq!(get.verb, Verb::Get);
    assert_eq!(
        resource(&get),
        ("", "v1", Some("kube-system"), "pods", Some("dns-1"), None)
    );
    let list = RequestInfo::parse(
        "GET",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1&resourceVersion=0&limit=500",
    )
    .unwrap();
    assert_eq!(list.verb, Verb::List);
    assert_eq!(list.path, "/api/v1/pods");
    assert_eq!(list.field_selector.as_deref(), Some("spec.nodeName=n1"));
    assert_eq!(list.resource_version.as_deref(), Some("0"));
    assert_eq!(resource(&list), ("", "v1", None, "pods", None, None));
}

#[test]
fn group_resources_watch_and_subresources() {
    let watch = RequestInfo::parse(
        "GET",
        "/apis/discovery.k8s.io/v1/endpointslices?watch=true&timeoutSeconds=300&labelSelector=a%21%3Db",
    )
    .unwrap();
    assert_eq!(watch.verb, Verb::Watch);
    assert!(watch.watch);
    assert_eq!(watch.timeout_seconds, Some(300));
    assert_eq!(watch.label_selector.as_deref(), Some("a!=b"));
    assert_eq!(
        resource(&watch),
        ("discovery.k8s.io", "v1", None, "endpointslices", None, None)
    );
    let legacy = RequestInfo::parse("GET", "/api/v1/watch/namespaces/default/services").unwrap();
    assert_eq!(legacy.verb, Verb::Watch);
    assert_eq!(resource(&legacy).2, Some("default"));
    let status = RequestInfo::parse("PATCH", "/api/v1/nodes/n1/status").unwrap();
    assert_eq!(status.verb, Verb::Patch);
    assert_eq!(
        resource(&status),
        ("", "v1", None, "nodes", Some("n1"), Some("status"))
    );
    assert!(status.cacheable());
}

#[test]
fn namespace_objects_and_their_subresources() {
    let ns = RequestInfo::parse("GET", "/api/v1/namespaces/kube-system").unwrap();
    assert_eq!(ns.verb, Verb::Get);
    assert_eq!(
        resource(&ns),
        (
            "",
            "v1",
            Some("kube-system"),
            "namespaces",
            Some("kube-system"),
            None
        )
    );
    let fin = RequestInfo::parse("PUT", "/api/v1/namespaces/x/finalize").unwrap();
    assert_eq!(resource(&fin).5, Some("finalize"));
    let all = RequestInfo::parse("GET", "/api/v1/namespaces").unwrap();
    assert_eq!(all.verb, Verb::List);
}

#[test]
fn write_verbs_follow_the_method() {
    let cases = [
        ("POST", "/api/v1/namespaces/d/pods", Verb::Create),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1",
            Verb::Update,
        ),
        ("DELETE", "/api/v1/namespaces/d/pods/p", Verb::Delete),
        (
            "DELETE",
            "/api/v1/namespaces/d/pods",
            Verb::DeleteCollection,
        ),
        ("OPTIONS", "/api/v1/pods", Verb::Other),
        ("HEAD", "/api/v1/pods", Verb::Other),
    ];
    for (method, path, verb) in cases {
        assert_eq!(
            RequestInfo::parse(method, path).unwrap().verb,
            verb,
            "{method} {path}"
        );
    }
}

#[test]
fn non_resource_discovery() {
    for path in [
        "/version",
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps",
        "/apis/apps/v1",
    ] {
        let info = RequestInfo::parse("GET", path).unwrap();
        assert_eq!(info.kind, RequestKind::NonResource, "{path}");
        assert!(info.cacheable(), "{path}");
    }
    for path in ["/healthz", "/metrics", "/openapi/v2", "/"] {
        let info = RequestInfo::parse("GET", path).unwrap();
        assert!(!info.cacheable(), "{path}");
    }
    assert!(!RequestInfo::parse("POST", "/version").unwrap().cacheable());
}

#[test]
fn what_is_cached() {
    let yes = [
        ("GET", "/apis/example.com/v1alpha1/namespaces/d/widgets/w"),
        ("GET", "/apis/example.com/v1alpha1/widgets"),
        ("GET", "/api/v1/nodes/n1"),
        ("POST", "/api/v1/namespaces/d/configmaps"),
        ("PUT", "/api/v1/nodes/n1/status"),
    ];
    for (method, path) in yes {
        assert!(
            RequestInfo::parse(method, path).unwrap().cacheable(),
            "{method} {path}"
        );
    }
    let no = [
        ("GET", "/api/v1/namespaces/d/pods/p/log"),
        ("POST", "/api/v1/namespaces/d/pods/p/exec"),
        ("POST", "/api/v1/namespaces/d/pods/p/eviction"),
        ("POST", "/api/v1/namespaces/d/serviceaccounts/sa/token"),
        ("GET", "/api/v1/proxy/namespaces/d/pods/p"),
        ("DELETE", "/api/v1/namespaces/d/pods/p"),
        (
            "GET",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        ),
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews"),
        ("POST", "/api/v1/namespaces/d/events"),
    ];
    for (method, path) in no {
        assert!(
            !RequestInfo::parse(method, path).unwrap().cacheable(),
            "{method} {path}"
        );
    }
}

#[test]
fn hostile_targets_are_refused() {
    assert!(matches!(
        RequestInfo::parse("GET", "/api/v1/namespaces/../secrets"),
        Err(RequestError::DotSegment { .. })
    ));
    assert!(matches!(
        RequestInfo::parse("GET", "/api/v1/%2E%2E/secrets"),
        Err(RequestError::DotSegment { .. })
    ));
    assert!(matches!(
        RequestInfo::parse("GET", "/api//v1"),
        Err(RequestError::EmptySegment)
    ));
    assert!(matches!(
        RequestInfo::parse("GET", "/api/v1/pods\0"),
        Err(RequestError::ControlCharacter { .. })
    ));
    let long = format!(
        "/api/v1/pods?labelSelector={}",
        "a".repeat(MAX_TARGET_BYTES)
    );
    assert!(matches!(
        RequestInfo::parse("GET", &long),
        Err(RequestError::TooLong { .. })
    ));
    assert!(matches!(
        RequestInfo::parse("GET", "/api/v1/pods?timeoutSeconds=-1"),
        Err(RequestError::BadNumber { .. })
    ));
    assert!(matches!(
        RequestInfo::parse("GET", "/api/v1/pods?watch=maybe"),
        Err(RequestError::BadBool { .. })
    ));
    assert!(matches!(
        RequestInfo::parse("G ET", "/api"),
        Err(RequestError::BadMethod { .. })
    ));
}
