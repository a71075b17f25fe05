//! Objects shaped like a real cluster's for the kubelet-like bench workload
//! ([`super::kubelet_load`]): managedFields, conditions, container statuses,
//! a node with its image list. About 4 KB per pod and 10 KB for the node in
//! JSON, so a 100-pod list crosses kube-apiserver's 128 KiB compression
//! threshold as it does in a real cluster.

use serde_json::{json, Value};

use crate::k8s::{FakeApiserver, Res};

/// The namespace of the workload's pods and services.
pub const NS: &str = "workload";

/// The services resource (kubelet watches services for pod environment variables).
pub fn services() -> Res {
    Res::new("", "v1", "services", "Service", true)
}

fn managed_fields(manager: &str, subresource: Option<&str>) -> Value {
    let mut entry = json!({
        "manager": manager,
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-11-30T08:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
            "f:ownerReferences": {".": {}, "k:{\"uid\":\"7d1c4a8e-0000-4000-8000-000000000001\"}": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:imagePullPolicy": {},
                "f:name": {}, "f:ports": {}, "f:resources": {}, "f:terminationMessagePath": {}}},
                "f:dnsPolicy": {}, "f:restartPolicy": {}, "f:schedulerName": {}, "f:terminationGracePeriodSeconds": {}}},
    });
    if let Some(sub) = subresource {
        entry["subresource"] = json!(sub);
        entry["fieldsV1"] = json!({"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:lastProbeTime": {},
            "f:lastTransitionTime": {}, "f:status": {}, "f:type": {}}}, "f:containerStatuses": {}, "f:hostIP": {},
            "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}});
    }
    entry
}

/// A pod as a real cluster stores it (about 4 KB of JSON).
pub fn pod(node: &str, i: usize) -> Value {
    let name = format!("app-{:02}-5d8f9c7b6-{i:05}", i % 10);
    let ip = format!("10.244.{}.{}", i / 250, i % 250 + 2);
    let condition = |t: &str| {
        json!({"type": t, "status": "True", "lastProbeTime": null,
            "lastTransitionTime": "2026-11-30T08:00:05Z"})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS,
            "generateName": format!("app-{:02}-5d8f9c7b6-", i % 10),
            "labels": {"app": format!("app-{:02}", i % 10), "pod-template-hash": "5d8f9c7b6"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T07:59:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("app-{:02}-5d8f9c7b6", i % 10),
                "uid": "7d1c4a8e-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [managed_fields("kube-controller-manager", None),
                managed_fields("kubelet", Some("status"))],
        },
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "app", "image": format!("registry.example.com/team/app-{:02}:v1.4.2", i % 10),
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 8080, "protocol": "TCP", "name": "http"}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                    {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"},
                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
        },
        "status": {
            "phase": "Running", "hostIP": "192.168.10.21", "hostIPs": [{"ip": "192.168.10.21"}],
            "podIP": ip, "podIPs": [{"ip": ip}], "qosClass": "Burstable",
            "startTime": "2026-11-30T08:00:00Z",
            "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"),
                condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": format!("registry.example.com/team/app-{:02}:v1.4.2", i % 10),
                "imageID": format!("registry.example.com/team/app-{:02}@sha256:{:064x}", i % 10, i),
                "containerID": format!("containerd://{:064x}", i * 7919 + 1),
                "state": {"running": {"startedAt": "2026-11-30T08:00:04Z"}}, "lastState": {}}],
        },
    })
}

/// The node (about 10 KB of JSON: 40 images in its status, as a busy node has).
pub fn node(name: &str) -> Value {
    let images: Vec<Value> = (0..40)
        .map(|i| {
            json!({"names": [format!("registry.example.com/team/app-{i:02}@sha256:{:064x}", i),
                format!("registry.example.com/team/app-{i:02}:v1.4.2")], "sizeBytes": 48_000_000 + i * 1_000_003})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/edge": "", "topology.kubernetes.io/zone": "site-17"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": node_status("2026-11-30T08:00:00Z", images),
    })
}

pub fn node_status(heartbeat: &str, images: Vec<Value>) -> Value {
    let cond = |t: &str, s: &str, reason: &str| {
        json!({"type": t, "status": s, "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": "2026-11-30T07:00:00Z", "reason": reason, "message": format!("kubelet has {reason}")})
    };
    let mut status = json!({
        "capacity": {"cpu": "4", "memory": "8024876Ki", "pods": "110", "ephemeral-storage": "61202244Ki"},
        "allocatable": {"cpu": "4", "memory": "7922476Ki", "pods": "110", "ephemeral-storage": "56403987978"},
        "conditions": [cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
            cond("Ready", "True", "KubeletReady")],
        "addresses": [{"type": "InternalIP", "address": "192.168.10.21"}, {"type": "Hostname", "address": "edge-1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": "0f2c", "systemUUID": "0f2c", "bootID": "b00t", "kernelVersion": "6.1.0",
            "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion": "containerd://1.7.20",
            "kubeletVersion": "v1.30.0", "kubeProxyVersion": "v1.30.0", "operatingSystem": "linux", "architecture": "amd64"},
    });
    if !images.is_empty() {
        status["images"] = json!(images);
    }
    status
}

/// Seeds the fake apiserver with `node`, `pods` pods on it, ten services and its lease.
pub fn seed(api: &FakeApiserver, node_name: &str, pods: usize) {
    api.register(&services());
    api.upsert(&Res::nodes(), node(node_name));
    for i in 0..pods {
        api.upsert(&Res::pods(), pod(node_name, i));
    }
    for i in 0..10 {
        api.upsert(
            &services(),
            json!({"metadata": {"name": format!("svc-{i}"), "namespace": NS},
                "spec": {"clusterIP": format!("10.96.0.{}", i + 10), "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                    "selector": {"app": format!("app-{i:02}")}, "type": "ClusterIP"}}),
        );
    }
    api.upsert(
        &Res::leases(),
        lease(node_name, "2026-11-30T08:00:00.000000Z"),
    );
}

pub fn lease(node_name: &str, renew: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node_name, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": "0f2c"}]},
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": 40, "renewTime": renew}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_the_size_of_a_real_clusters() {
        let pod_bytes = serde_json::to_vec(&pod("edge-1", 7)).unwrap().len();
        let node_bytes = serde_json::to_vec(&node("edge-1")).unwrap().len();
        assert!(
            (3_000..6_000).contains(&pod_bytes),
            "pod: {pod_bytes} bytes"
        );
        assert!(
            (8_000..14_000).contains(&node_bytes),
            "node: {node_bytes} bytes"
        );
        assert!(
            100 * pod_bytes > 128 * 1024,
            "100 pods cross the gzip threshold"
        );
    }
}
