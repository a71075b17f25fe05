//! Label and field selector cases, parsed and matched against real-looking objects.

use super::*;
use crate::label_selector::LabelSelector;
use serde_json::json;

fn pod() -> Value {
    json!({
        "metadata": {
            "name": "web-1", "namespace": "default",
            "labels": {"app": "web", "tier": "frontend", "replicas": "3"}
        },
        "spec": {"nodeName": "edge-1", "priority": 7, "hostNetwork": false},
        "status": {"phase": "Running"}
    })
}

fn label(selector: &str) -> bool {
    let pod = pod();
    let labels = pod["metadata"]["labels"].as_object();
    LabelSelector::parse(selector).unwrap().matches(labels)
}

fn field(selector: &str) -> bool {
    FieldSelector::parse(selector).unwrap().matches(&pod())
}

#[test]
fn label_selector_cases() {
    let cases = [
        ("", true),
        ("app=web", true),
        ("app==web", true),
        ("app = web", true),
        ("app=db", false),
        ("app!=db", true),
        ("app!=web", false),
        ("missing!=x", true),
        ("app in (web,db)", true),
        ("app in (db, cache)", false),
        ("app notin (db,cache)", true),
        ("app notin (web)", false),
        ("missing notin (x)", true),
        ("missing in (x)", false),
        ("tier", true),
        ("missing", false),
        ("!missing", true),
        ("!app", false),
        ("app=web,tier=frontend", true),
        ("app=web,tier=backend", false),
        ("app in (web,db),tier notin (backend),!canary", true),
        ("replicas>2", true),
        ("replicas<3", false),
        ("example.com/role", false),
        ("app=", false),
    ];
    for (selector, want) in cases {
        assert_eq!(label(selector), want, "label selector {selector:?}");
    }
}

#[test]
fn label_selector_without_labels() {
    let sel = LabelSelector::parse("!app,x!=y").unwrap();
    assert!(sel.matches(None));
    assert!(!LabelSelector::parse("app").unwrap().matches(None));
}

#[test]
fn invalid_label_selectors_name_the_problem() {
    for bad in [
        "app in web",
        "app in ()",
        "app=(x",
        "app=web,",
        "a b",
        "app>x",
        "=web",
        "app=we b",
        "app in (a,(b))",
    ] {
        let err = LabelSelector::parse(bad).unwrap_err();
        assert_eq!(err.kind, "label");
        assert_eq!(err.selector, bad);
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn label_selector_canonical_form_is_order_independent() {
    let a = LabelSelector::parse("tier in (b,a),app=web").unwrap();
    let b = LabelSelector::parse(" app==web , tier in (a, b)").unwrap();
    assert_eq!(a.to_string(), "app=web,tier in (a,b)");
    assert_eq!(a.to_string(), b.to_string());
}

#[test]
fn field_selector_cases() {
    let cases = [
        ("", true),
        ("metadata.name=web-1", true),
        ("metadata.name==web-1", true),
        ("metadata.name!=web-1", false),
        ("metadata.namespace=default", true),
        ("metadata.namespace=kube-system", false),
        ("spec.nodeName=edge-1", true),
        ("spec.nodeName=edge-2", false),
        ("spec.nodeName!=edge-2", true),
        ("status.phase=Running", true),
        ("status.phase!=Running", false),
        ("status.phase!=Failed,spec.nodeName=edge-1", true),
        ("status.phase=Running,spec.nodeName=edge-2", false),
        ("spec.priority=7", true),
        ("spec.hostNetwork=false", true),
        ("spec.schedulerName=", true),
        ("spec.schedulerName!=", false),
        ("metadata.labels=x", false),
        ("metadata.labels!=x", true),
    ];
    for (selector, want) in cases {
        assert_eq!(field(selector), want, "field selector {selector:?}");
    }
}

#[test]
fn field_selector_escapes() {
    let obj = json!({"metadata": {"name": "a,b=c"}});
    let sel = FieldSelector::parse(r"metadata.name=a\,b\=c").unwrap();
    assert!(sel.matches(&obj));
    assert_eq!(sel.required("metadata.name"), Some("a,b=c"));
    assert_eq!(sel.to_string(), r"metadata.name=a\,b\=c");
}

#[test]
fn invalid_field_selectors_name_the_problem() {
    for bad in [
        "spec.nodeName",
        "=x",
        "spec..x=1",
        "a=b=c",
        "spec.nodeName=a,",
        "sp ec=1",
    ] {
        let err = FieldSelector::parse(bad).unwrap_err();
        assert_eq!(err.kind, "field");
        assert!(err.to_string().contains("invalid field selector"), "{err}");
    }
}
