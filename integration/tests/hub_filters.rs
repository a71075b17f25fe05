//! Response filters through the real agent binary: kube-proxy lists and
//! watches EndpointSlices of a pool-topology Service (an endpoint leaving
//! the pool during the watch), kubelet gets `default/kubernetes` at the HTTPS
//! listener address, and what no filter touches is byte-identical. Objects
//! are the recorded apiserver JSON of node-proxy/testdata/recorded/.

use std::time::Duration;

use integration::hub::{HubEnv, HubHttps, HubOptions, HTTPS_IP};
use integration::k8s::Res;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);
const KUBE_PROXY: &str = "kube-proxy/v1.30.0 (linux/amd64) kubernetes/abcdef";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

fn recorded(name: &str) -> Value {
    let path = format!(
        "{}/../node-proxy/testdata/recorded/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn item(file: &str, i: usize) -> Value {
    recorded(file)["items"][i].clone()
}

fn ips(slice: &Value) -> Vec<&str> {
    slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_proxy_sees_its_pool_and_kubelet_the_node_proxy() {
    // masterservice is on by default with a serving HTTPS listener.
    let env = HubEnv::start(HubOptions {
        https: HubHttps::Files,
        ..Default::default()
    })
    .await
    .unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let (services, slices) = (
        Res::new("", "v1", "services", "Service", true),
        Res::new(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        ),
    );
    env.api.register(&services);
    env.api.register(&slices);
    // This node (the agent is edge-1) in zone-a, as kubelet gets it.
    let mut node = recorded("node.json");
    node["metadata"]["name"] = "edge-1".into();
    env.api.upsert(&Res::nodes(), node);
    assert_eq!(
        env.kubelet()
            .get("/api/v1/nodes/edge-1")
            .await
            .unwrap()
            .status,
        200
    );
    env.api.upsert(&services, item("service-list.json", 0));
    env.api.upsert(&services, recorded("service-kube-dns.json"));
    let mut kube_dns = item("endpointslice-list.json", 1);
    env.api.upsert(&slices, kube_dns.clone());

    let kube_proxy = env.client(KUBE_PROXY);
    // Services are not filtered for kube-proxy: upstream's bytes.
    let via_hub = kube_proxy.get("/api/v1/services").await.unwrap();
    let upstream = env
        .direct(KUBE_PROXY)
        .get("/api/v1/services")
        .await
        .unwrap();
    assert_eq!((via_hub.status, &via_hub.body), (200, &upstream.body));

    let list = kube_proxy.get(SLICES).await.unwrap().json().unwrap();
    assert_eq!(
        ips(&list["items"][0]),
        ["10.244.0.3"],
        "zone-b endpoint hidden"
    );
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = kube_proxy
        .watch(&format!("{SLICES}?watch=1&resourceVersion={rv}"))
        .await
        .unwrap();
    kube_dns["endpoints"][0]["zone"] = "zone-b".into();
    env.api.upsert(&slices, kube_dns);
    let event = watch.next(LIMIT).await.unwrap().expect("watch event");
    assert_eq!(event["type"], "MODIFIED");
    assert_eq!(event["object"]["endpoints"], json!([]), "it left the pool");

    let kubernetes = "/api/v1/namespaces/default/services/kubernetes";
    let service = env.kubelet().get(kubernetes).await.unwrap().json().unwrap();
    assert_eq!(service["spec"]["clusterIP"], HTTPS_IP);
    assert_eq!(service["spec"]["ports"][0]["port"], env.https_addr.port());
    let kube_dns = "/api/v1/namespaces/kube-system/services/kube-dns";
    env.assert_gets_match_upstream(&[kube_dns, "/api/v1/nodes/edge-1"])
        .await;
}
