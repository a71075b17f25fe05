//! Kubelet-shaped strategic merge patches (what its status manager and node status
//! loop build with `CreateTwoWayMergePatch`) applied to recorded apiserver JSON
//! (`testdata/recorded/`); each expected object is the recorded one with exactly the
//! changes the SMP rules make, written out by hand.

use super::*;
use serde_json::json;

fn recorded(name: &str) -> Value {
    let path = format!("{}/testdata/recorded/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn pod_patch(patch: Value) -> Value {
    apply(&recorded("pod-minikube.json"), &patch, &Schema::POD).unwrap()
}

const UID: &str = "d8aa9a47-ad0f-4bbe-bc12-ab31605d3211";

fn condition_order(types: &[&str]) -> Value {
    Value::Array(types.iter().map(|t| json!({"type": t})).collect())
}

#[test]
fn container_crash_marks_the_pod_not_ready() {
    // kubelet after the container was OOM-killed and restarted: Ready and
    // ContainersReady change (by type), the atomic containerStatuses list is sent whole.
    let statuses = json!([{
        "containerID": "docker://5f0c0f7e1f2b",
        "image": "gcr.io/kuar-demo/kuard-amd64:1",
        "imageID": "docker-pullable://gcr.io/kuar-demo/kuard-amd64@sha256:bd17153e9a3319f401acc7a27759243f37d422c06cbbf01cb3e1f54bbbfe14f4",
        "lastState": {"terminated": {"containerID": "docker://d8e1e33309272b4a4267e15f995ff7b6612532240cb61dc03a118659620226f2",
            "exitCode": 137, "finishedAt": "2022-12-23T10:01:02Z", "reason": "OOMKilled",
            "startedAt": "2022-12-23T09:36:47Z"}},
        "name": "queue", "ready": false, "restartCount": 1, "started": true,
        "state": {"running": {"startedAt": "2022-12-23T10:01:03Z"}}
    }]);
    let patch = json!({
        "metadata": {"uid": UID},
        "status": {
            "$setElementOrder/conditions": condition_order(&["Initialized", "Ready", "ContainersReady", "PodScheduled"]),
            "conditions": [
                {"lastTransitionTime": "2022-12-23T10:01:02Z", "message": "containers with unready status: [queue]",
                 "reason": "ContainersNotReady", "status": "False", "type": "Ready"},
                {"lastTransitionTime": "2022-12-23T10:01:02Z", "message": "containers with unready status: [queue]",
                 "reason": "ContainersNotReady", "status": "False", "type": "ContainersReady"}
            ],
            "containerStatuses": statuses
        }
    });
    let mut expected = recorded("pod-minikube.json");
    let conditions = expected["status"]["conditions"].as_array_mut().unwrap();
    for c in &mut conditions[1..3] {
        c["lastTransitionTime"] = json!("2022-12-23T10:01:02Z");
        c["message"] = json!("containers with unready status: [queue]");
        c["reason"] = json!("ContainersNotReady");
        c["status"] = json!("False");
    }
    expected["status"]["containerStatuses"] = statuses;
    assert_eq!(pod_patch(patch), expected);
}

#[test]
fn recovery_deletes_reason_and_message_with_null() {
    let patch = json!({
        "metadata": {"uid": UID},
        "status": {
            "$setElementOrder/conditions": condition_order(&["Initialized", "Ready", "ContainersReady", "PodScheduled"]),
            "conditions": [{"message": null, "reason": null, "status": "True", "type": "Ready",
                            "lastTransitionTime": "2022-12-23T10:05:00Z"}]
        }
    });
    let mut start = recorded("pod-minikube.json");
    start["status"]["conditions"][1]["reason"] = json!("ContainersNotReady");
    start["status"]["conditions"][1]["message"] = json!("containers with unready status: [queue]");
    start["status"]["conditions"][1]["status"] = json!("False");
    let got = apply(&start, &patch, &Schema::POD).unwrap();
    let mut expected = recorded("pod-minikube.json");
    expected["status"]["conditions"][1]["lastTransitionTime"] = json!("2022-12-23T10:05:00Z");
    assert_eq!(got, expected);
}

#[test]
fn a_new_condition_goes_where_set_element_order_puts_it() {
    // kubelet 1.29+ adds PodReadyToStartContainers first; the new element keeps its
    // `lastProbeTime: null` as the apiserver answers it.
    let new = json!({"lastProbeTime": null, "lastTransitionTime": "2022-12-23T09:36:46Z",
                     "status": "True", "type": "PodReadyToStartContainers"});
    let patch = json!({
        "metadata": {"uid": UID},
        "status": {
            "$setElementOrder/conditions": condition_order(&["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]),
            "conditions": [new]
        }
    });
    let mut expected = recorded("pod-minikube.json");
    let conditions = expected["status"]["conditions"].as_array_mut().unwrap();
    conditions.insert(0, new);
    assert_eq!(pod_patch(patch), expected);
}

#[test]
fn without_an_order_list_new_elements_come_first() {
    // As the kubectl patch task shows for containers: a patch element the original
    // lacks comes before the original elements; a named one keeps its place.
    let patch = json!({"status": {"conditions": [
        {"type": "DisruptionTarget", "status": "True"},
        {"type": "Ready", "status": "False"}
    ]}});
    let got = pod_patch(patch);
    let types: Vec<&str> = got["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "DisruptionTarget",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled"
        ]
    );
    assert_eq!(got["status"]["conditions"][2]["status"], "False");
    assert_eq!(
        got["status"]["conditions"][2]["lastTransitionTime"], "2022-12-23T09:36:48Z",
        "merged, not replaced"
    );
}

#[test]
fn pod_ips_merge_on_ip() {
    let patch = json!({"status": {
        "$setElementOrder/podIPs": [{"ip": "172.17.0.6"}, {"ip": "fd00::6"}],
        "podIPs": [{"ip": "fd00::6"}],
        "hostIPs": [{"ip": "192.168.49.2"}]
    }});
    let got = pod_patch(patch);
    assert_eq!(
        got["status"]["podIPs"],
        json!([{"ip": "172.17.0.6"}, {"ip": "fd00::6"}])
    );
    assert_eq!(got["status"]["hostIPs"], json!([{"ip": "192.168.49.2"}]));
}

#[test]
fn node_heartbeat_patch_touches_only_the_heartbeats() {
    // kubelet's node status update: each condition's lastHeartbeatTime, by type.
    let order = condition_order(&["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
    let conditions: Vec<Value> = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        .iter()
        .map(|t| json!({"lastHeartbeatTime": "2026-01-02T20:12:56Z", "type": t}))
        .collect();
    let patch = json!({"status": {
        "$setElementOrder/addresses": [{"type": "InternalIP"}, {"type": "InternalDNS"}, {"type": "Hostname"}],
        "$setElementOrder/conditions": order,
        "conditions": conditions
    }});
    let node = recorded("node-eks.json");
    let got = apply(&node, &patch, &Schema::NODE).unwrap();
    let mut expected = node.clone();
    for c in expected["status"]["conditions"].as_array_mut().unwrap() {
        c["lastHeartbeatTime"] = json!("2026-01-02T20:12:56Z");
    }
    assert_eq!(got, expected);
}

#[test]
fn node_images_are_replaced_and_addresses_merged() {
    let images = json!([{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 318731}]);
    let patch = json!({"status": {
        "images": images,
        "addresses": [{"type": "ExternalIP", "address": "54.1.2.3"}]
    }});
    let got = apply(&recorded("node-eks.json"), &patch, &Schema::NODE).unwrap();
    assert_eq!(got["status"]["images"], images, "atomic list replaced");
    let types: Vec<&str> = got["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["ExternalIP", "InternalIP", "InternalDNS", "Hostname"]
    );
}

#[test]
fn map_directives() {
    let target = json!({"status": {"a": {"x": 1, "y": 2}, "b": {"x": 1}, "c": {"x": 1, "y": 2}}});
    let patch = json!({"status": {
        "a": {"$patch": "replace", "z": 3},
        "b": {"$patch": "delete"},
        "c": {"$patch": "merge", "y": null, "z": 3}
    }});
    assert_eq!(
        apply(&target, &patch, &Schema::OBJECT).unwrap(),
        json!({"status": {"a": {"z": 3}, "c": {"x": 1, "z": 3}}})
    );
    let retain =
        json!({"spec": {"$retainKeys": ["type", "rollingUpdate"], "type": "RollingUpdate"}});
    let target = json!({"spec": {"type": "Recreate", "recreate": {}, "rollingUpdate": {"max": 1}}});
    assert_eq!(
        apply(&target, &retain, &Schema::OBJECT).unwrap(),
        json!({"spec": {"type": "RollingUpdate", "rollingUpdate": {"max": 1}}})
    );
}

#[test]
fn list_directives() {
    let target = json!({"status": {"conditions": [
        {"type": "A", "status": "True"}, {"type": "B", "status": "True"}, {"type": "C", "status": "True"}
    ]}});
    let delete = json!({"status": {"conditions": [{"type": "B", "$patch": "delete"}]}});
    assert_eq!(
        apply(&target, &delete, &Schema::POD).unwrap(),
        json!({"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "C", "status": "True"}]}})
    );
    let replace = json!({"status": {"conditions": [{"$patch": "replace"}, {"type": "Z", "status": "False"}]}});
    assert_eq!(
        apply(&target, &replace, &Schema::POD).unwrap(),
        json!({"status": {"conditions": [{"type": "Z", "status": "False"}]}})
    );
    let meta = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1"}}});
    let patch = json!({"metadata": {
        "$deleteFromPrimitiveList/finalizers": ["a"],
        "finalizers": ["c"],
        "labels": {"x": null, "y": "2"}
    }});
    assert_eq!(
        apply(&meta, &patch, &Schema::POD).unwrap(),
        json!({"metadata": {"finalizers": ["c", "b"], "labels": {"y": "2"}}})
    );
    // A primitive list without a merge strategy is replaced.
    let args = json!({"spec": {"args": ["a", "b"]}});
    let patch = json!({"spec": {"args": ["c"]}});
    assert_eq!(
        apply(&args, &patch, &Schema::POD).unwrap(),
        json!({"spec": {"args": ["c"]}})
    );
}

#[test]
fn set_element_order_alone_reorders() {
    let target = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}]}});
    let patch = json!({"status": {"$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}]}});
    assert_eq!(
        apply(&target, &patch, &Schema::POD).unwrap(),
        json!({"status": {"conditions": [{"type": "B"}, {"type": "A"}]}})
    );
}

#[test]
fn malformed_patches_name_the_problem() {
    let pod = recorded("pod-minikube.json");
    let cases = [
        (json!([1]), "must be a JSON object"),
        (
            json!({"status": {"$frobnicate": 1}}),
            "unknown strategic merge patch directive",
        ),
        (
            json!({"status": {"$patch": "explode"}}),
            "invalid $patch value",
        ),
        (
            json!({"status": {"conditions": [{"status": "True"}]}}),
            "no merge key \"type\"",
        ),
        (
            json!({"status": {"conditions": ["Ready"]}}),
            "is not an object",
        ),
        (
            json!({"status": {"conditions": [{"type": "A", "$patch": "merge"}]}}),
            "merging lists cannot",
        ),
        (
            json!({"status": {"$retainKeys": "phase"}}),
            "expected a list of strings",
        ),
        (
            json!({"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                              "conditions": [{"type": "PodScheduled", "status": "True"}]}}),
            "does not match its $setElementOrder",
        ),
        (
            json!({"status": {"$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}],
                              "conditions": [{"type": "A"}, {"type": "B"}]}}),
            "does not match its $setElementOrder",
        ),
    ];
    for (patch, message) in cases {
        let err = apply(&pod, &patch, &Schema::POD).unwrap_err();
        assert!(err.to_string().contains(message), "{patch}: {err}");
    }
}

#[test]
fn limits_hold() {
    let mut deep = json!({"x": 1});
    for _ in 0..(MAX_DEPTH + 2) {
        deep = json!({ "a": deep });
    }
    let err = apply(&json!({}), &deep, &Schema::OBJECT).unwrap_err();
    assert!(matches!(err, SmpError::TooDeep { .. }), "{err}");
    let mut lists = json!([1]);
    for _ in 0..(MAX_DEPTH + 2) {
        lists = json!([lists]);
    }
    let err = apply(
        &json!({}),
        &json!({"spec": {"args": lists}}),
        &Schema::OBJECT,
    )
    .unwrap_err();
    assert!(
        matches!(err, SmpError::TooDeep { .. }),
        "lists in lists: {err}"
    );
    let many: Vec<Value> = (0..=MAX_LIST_ITEMS)
        .map(|i| json!({"type": i.to_string()}))
        .collect();
    let patch = json!({"status": {"conditions": many}});
    let err = apply(&json!({}), &patch, &Schema::POD).unwrap_err();
    assert!(matches!(err, SmpError::TooManyItems { .. }), "{err}");
}
