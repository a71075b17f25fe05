use super::*;
use serde_json::json;

fn pod(spec: Value) -> Value {
    json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
}

fn base() -> Value {
    pod(json!({
        "nodeName": "edge-1",
        "containers": [{"name": "c", "image": "nginx:1"}],
        "terminationGracePeriodSeconds": 30,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
    }))
}

fn changed(f: impl FnOnce(&mut Value)) -> Value {
    let mut p = base();
    f(&mut p);
    p
}

fn check(new: &Value) -> Result<(), String> {
    validate("p", &base(), new).map_err(|e| e.to_string())
}

#[test]
fn allowed_changes_pass() {
    let cases = [
        changed(|_| {}),
        // tolerationSeconds changed, and dropped (forever).
        changed(|p| p["spec"]["tolerations"][0]["tolerationSeconds"] = json!(86400)),
        changed(|p| {
            p["spec"]["tolerations"][1]
                .as_object_mut()
                .unwrap()
                .remove("tolerationSeconds");
        }),
        // Additions, in any order.
        changed(|p| {
            let t = p["spec"]["tolerations"].as_array_mut().unwrap();
            t.insert(0, json!({"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}));
            t.reverse();
        }),
        changed(|p| p["spec"]["containers"][0]["image"] = json!("nginx:2")),
        changed(|p| p["spec"]["activeDeadlineSeconds"] = json!(600)),
        changed(|p| p["metadata"]["labels"] = json!({"a": "b"})),
        // Absent and empty are the same to Go.
        changed(|p| p["spec"]["volumes"] = json!([])),
    ];
    for (i, new) in cases.iter().enumerate() {
        assert_eq!(check(new), Ok(()), "case {i}");
    }
    let mut negative = base();
    negative["spec"]["terminationGracePeriodSeconds"] = json!(-1);
    let mut one = negative.clone();
    one["spec"]["terminationGracePeriodSeconds"] = json!(1);
    assert_eq!(validate("p", &negative, &one), Ok(()));
}

#[test]
fn removing_or_modifying_a_toleration_is_forbidden() {
    let removed = changed(|p| {
        p["spec"]["tolerations"].as_array_mut().unwrap().pop();
    });
    let modified = changed(|p| {
        p["spec"]["tolerations"][0]["operator"] = json!("Equal");
        p["spec"]["tolerations"][0]["value"] = json!("x");
    });
    for new in [removed, modified] {
        assert_eq!(
            check(&new),
            Err("Pod \"p\" is invalid: spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds".into())
        );
    }
}

#[test]
fn toleration_seconds_need_noexecute() {
    let new = changed(|p| {
        p["spec"]["tolerations"].as_array_mut().unwrap().push(
            json!({"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}),
        );
    });
    assert_eq!(
        check(&new),
        Err("Pod \"p\" is invalid: spec.tolerations[2].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set".into())
    );
    let bad = changed(|p| {
        p["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"operator": "Equal", "value": "v", "effect": "NoExecute"}));
    });
    assert!(check(&bad).unwrap_err().contains("operator must be Exists"));
}

#[test]
fn other_spec_changes_are_forbidden() {
    let cases = [
        changed(|p| p["spec"]["nodeName"] = json!("edge-2")),
        changed(|p| p["spec"]["containers"][0]["name"] = json!("d")),
        changed(|p| p["spec"]["terminationGracePeriodSeconds"] = json!(10)),
        changed(|p| p["spec"]["hostNetwork"] = json!(true)),
    ];
    for (i, new) in cases.iter().enumerate() {
        let err = check(new).unwrap_err();
        assert!(
            err.starts_with("Pod \"p\" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"),
            "case {i}: {err}"
        );
    }
    let added = changed(|p| {
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "d", "image": "x"}))
    });
    assert!(check(&added)
        .unwrap_err()
        .contains("may not add or remove containers"));
    let mut with_deadline = base();
    with_deadline["spec"]["activeDeadlineSeconds"] = json!(60);
    let mut raised = with_deadline.clone();
    raised["spec"]["activeDeadlineSeconds"] = json!(120);
    assert!(validate("p", &with_deadline, &raised).is_err());
    assert!(validate("p", &with_deadline, &base()).is_err());
}

#[test]
fn the_error_is_a_422_status_like_the_apiservers() {
    let err = validate(
        "p",
        &base(),
        &changed(|p| p["spec"]["nodeName"] = json!("x")),
    )
    .unwrap_err();
    let status = err.to_status();
    assert_eq!(status["code"], 422);
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["kind"], "Pod");
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldValueForbidden"
    );
    assert_eq!(status["details"]["causes"][0]["field"], "spec");
}
