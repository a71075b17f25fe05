//! masterservice: kubelet sees the `default/kubernetes` Service (and its
//! Endpoints and EndpointSlice) pointing at the node proxy's HTTPS listener,
//! so the `KUBERNETES_SERVICE_HOST`/`_PORT` environment kubelet injects into
//! pods (and the in-cluster config built from it) leads to the node proxy
//! instead of the cloud: pods keep reaching "the apiserver" while offline.
//! Same behaviour as OpenYurt YurtHub's masterservice filter.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use super::json::{label, meta_str};
use super::Resource;

/// The Service every cluster has for its apiserver.
const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
/// Its port kubelet turns into `KUBERNETES_SERVICE_PORT`.
const PORT_NAME: &str = "https";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Rewrites the apiserver's Service objects to the listener at `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterService {
    pub addr: SocketAddr,
}

impl MasterService {
    /// Edits `object` (of `resource`) if it is the apiserver's; returns whether it changed.
    pub fn apply(&self, resource: Resource, object: &mut Value) -> bool {
        if meta_str(object, "namespace") != Some(NAMESPACE) {
            return false;
        }
        let before = object.clone();
        match resource {
            Resource::Services if meta_str(object, "name") == Some(NAME) => self.service(object),
            Resource::Endpoints if meta_str(object, "name") == Some(NAME) => self.endpoints(object),
            Resource::EndpointSlices if label(object, SERVICE_NAME_LABEL) == Some(NAME) => {
                self.slice(object)
            }
            _ => return false,
        }
        *object != before
    }

    fn ip(&self) -> String {
        self.addr.ip().to_string()
    }

    fn service(&self, object: &mut Value) {
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        spec.insert("clusterIP".into(), json!(self.ip()));
        spec.insert("clusterIPs".into(), json!([self.ip()]));
        set_https_port(spec.get_mut("ports"), self.addr.port());
    }

    fn endpoints(&self, object: &mut Value) {
        let Some(subsets) = object.get_mut("subsets").and_then(Value::as_array_mut) else {
            return;
        };
        for subset in subsets.iter_mut().filter_map(Value::as_object_mut) {
            subset.insert("addresses".into(), json!([{ "ip": self.ip() }]));
            subset.remove("notReadyAddresses");
            set_https_port(subset.get_mut("ports"), self.addr.port());
        }
    }

    fn slice(&self, object: &mut Value) {
        let Some(slice) = object.as_object_mut() else {
            return;
        };
        let family = match self.addr.ip() {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        };
        slice.insert("addressType".into(), json!(family));
        let endpoint = json!({ "addresses": [self.ip()], "conditions": { "ready": true } });
        slice.insert("endpoints".into(), json!([endpoint]));
        set_https_port(slice.get_mut("ports"), self.addr.port());
    }
}

/// Sets `port` of the entry named `https` in a ports array.
fn set_https_port(ports: Option<&mut Value>, port: u16) {
    let Some(ports) = ports.and_then(Value::as_array_mut) else {
        return;
    };
    for entry in ports.iter_mut().filter_map(Value::as_object_mut) {
        if entry.get("name").and_then(Value::as_str) == Some(PORT_NAME) {
            entry.insert("port".into(), json!(port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::json;

    const SERVICES: &[u8] = include_bytes!("../../testdata/recorded/service-list.json");
    const ENDPOINTS: &[u8] = include_bytes!("../../testdata/recorded/endpoints-list.json");
    const SLICES: &[u8] = include_bytes!("../../testdata/recorded/endpointslice-list.json");

    fn filter() -> MasterService {
        MasterService {
            addr: "169.254.2.1:10268".parse().unwrap(),
        }
    }

    fn edit(resource: Resource) -> impl Fn(&mut Value) -> bool {
        move |v: &mut Value| filter().apply(resource, v)
    }

    fn items(body: &[u8]) -> Vec<Value> {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["items"].as_array().unwrap().clone()
    }

    #[test]
    fn service_list_points_kubernetes_at_the_listener_and_nothing_else() {
        let before = items(SERVICES);
        assert_eq!(before[0]["spec"]["clusterIP"], "10.96.0.1");
        let out = json::list(SERVICES, edit(Resource::Services)).unwrap();
        let after = items(&out);
        assert_eq!(after[0]["spec"]["clusterIP"], "169.254.2.1");
        assert_eq!(after[0]["spec"]["clusterIPs"], json!(["169.254.2.1"]));
        assert_eq!(after[0]["spec"]["ports"][0]["port"], 10268);
        assert_eq!(after[0]["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(after[1], before[1], "nginx-service untouched");
        // Only the first item's bytes changed: the rest is upstream's.
        let tail = &SERVICES[SERVICES.len() - 200..];
        assert!(out.ends_with(tail));
    }

    #[test]
    fn service_get_and_watch_event() {
        let service = items(SERVICES)[0].clone();
        let body = serde_json::to_vec(&service).unwrap();
        let out = json::object(&body, edit(Resource::Services)).unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["spec"]["clusterIP"], "169.254.2.1");
        let line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": service})).unwrap();
        let out = json::event(&line, edit(Resource::Services)).unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["type"], "MODIFIED");
        assert_eq!(got["object"]["spec"]["ports"][0]["port"], 10268);
        let other = items(SERVICES)[1].clone();
        let line = serde_json::to_vec(&json!({"type": "ADDED", "object": other})).unwrap();
        assert_eq!(json::event(&line, edit(Resource::Services)), None);
    }

    #[test]
    fn endpoints_and_slice_lead_to_the_listener() {
        let out = json::list(ENDPOINTS, edit(Resource::Endpoints)).unwrap();
        let after = items(&out);
        assert_eq!(
            after[0]["subsets"],
            json!([{"addresses": [{"ip": "169.254.2.1"}],
                    "ports": [{"name": "https", "port": 10268, "protocol": "TCP"}]}])
        );
        assert_eq!(after[1], items(ENDPOINTS)[1]);
        let out = json::list(SLICES, edit(Resource::EndpointSlices)).unwrap();
        let after = items(&out);
        assert_eq!(after[0]["addressType"], "IPv4");
        assert_eq!(
            after[0]["endpoints"][0]["addresses"],
            json!(["169.254.2.1"])
        );
        assert_eq!(after[0]["ports"][0]["port"], 10268);
        assert_eq!(after[1], items(SLICES)[1], "kube-dns slice untouched");
    }

    #[test]
    fn an_ipv6_listener_makes_an_ipv6_slice_and_wrong_shapes_do_not_panic() {
        let v6 = MasterService {
            addr: "[fd00::1]:10268".parse().unwrap(),
        };
        let mut slice = items(SLICES)[0].clone();
        assert!(v6.apply(Resource::EndpointSlices, &mut slice));
        assert_eq!(slice["addressType"], "IPv6");
        let mut odd = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                             "spec": "x", "subsets": 3});
        assert!(!filter().apply(Resource::Services, &mut odd));
        assert!(!filter().apply(Resource::Endpoints, &mut odd));
        let mut ports_odd = json!({"metadata": {"name": "kubernetes", "namespace": "default"},
                             "spec": {"ports": [1, {"name": "https"}]}});
        assert!(filter().apply(Resource::Services, &mut ports_odd));
    }
}
