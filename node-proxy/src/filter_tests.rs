//! In-process: the response filters on the hub's real response path, over
//! recorded apiserver JSON. Off, clients get upstream's bytes exactly; on,
//! list, watch and offline answers are filtered while the cache keeps
//! upstream's objects.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::health::OfflineReason;
use crate::settings::FilterSettings;
use crate::test_hub::{self, FakeBody};

const SERVICES: &[u8] = include_bytes!("../testdata/recorded/service-list.json");
const SLICES: &[u8] = include_bytes!("../testdata/recorded/endpointslice-list.json");
const NODE: &[u8] = include_bytes!("../testdata/recorded/node.json");
const KUBE_DNS: &[u8] = include_bytes!("../testdata/recorded/service-kube-dns.json");

const SLICE_PATH: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const KUBELET: &str = "kubelet/v1.30.0 (linux/amd64) kubernetes/abc";
const KUBE_PROXY: &str = "kube-proxy/v1.30.0 (linux/amd64) kubernetes/abc";

/// The recorded kube-dns slice as watch events: ADDED as recorded, then
/// MODIFIED with its zone-a endpoint moved to zone-b.
fn watch_lines() -> Bytes {
    let list: Value = serde_json::from_slice(SLICES).unwrap();
    let mut slice = list["items"][1].clone();
    slice["kind"] = "EndpointSlice".into();
    slice["apiVersion"] = "discovery.k8s.io/v1".into();
    let added = json!({"type": "ADDED", "object": slice.clone()});
    slice["endpoints"][0]["zone"] = "zone-b".into();
    slice["metadata"]["resourceVersion"] = "605".into();
    let modified = json!({"type": "MODIFIED", "object": slice});
    let mut out = Vec::new();
    for event in [added, modified] {
        out.extend(serde_json::to_vec(&event).unwrap());
        out.push(b'\n');
    }
    Bytes::from(out)
}

async fn recorded(req: Request<hyper::body::Incoming>) -> Response<FakeBody> {
    let watch = req.uri().query().is_some_and(|q| q.contains("watch=1"));
    let body = match (req.uri().path(), watch) {
        (SLICE_PATH, true) => watch_lines(),
        (SLICE_PATH, false) => Bytes::from_static(SLICES),
        ("/api/v1/services", false) => Bytes::from_static(SERVICES),
        ("/api/v1/nodes/dummyNode", false) => Bytes::from_static(NODE),
        ("/api/v1/namespaces/kube-system/services/kube-dns", false) => Bytes::from_static(KUBE_DNS),
        _ => {
            let body = Full::new(Bytes::from_static(b"{}")).boxed();
            return Response::builder().status(404).body(body).unwrap();
        }
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(body).boxed())
        .unwrap()
}

/// GET `target` through the hub as `agent`: status and whole body.
async fn get(hub: SocketAddr, agent: &str, target: &str) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(hub).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(target)
        .header("host", "hub")
        .header("user-agent", agent)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let limit = Duration::from_secs(10);
    let resp = tokio::time::timeout(limit, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(limit, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    (status, body.to_bytes())
}

fn endpoint_ips(list: &[u8], item: usize) -> Vec<String> {
    let v: Value = serde_json::from_slice(list).unwrap();
    v["items"][item]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn filters_off_clients_get_upstreams_bytes() {
    let dir = tempfile::tempdir().unwrap();
    test_hub::pki(dir.path());
    let upstream = test_hub::fake_apiserver(dir.path(), recorded).await;
    let components = "kubelet,kube-proxy";
    let (hub, _) = test_hub::hub(dir.path(), upstream, components, FilterSettings::default()).await;
    assert_eq!(
        get(hub, KUBE_PROXY, SLICE_PATH).await,
        (200, Bytes::from_static(SLICES))
    );
    let watch = format!("{SLICE_PATH}?watch=1");
    assert_eq!(get(hub, KUBE_PROXY, &watch).await, (200, watch_lines()));
    let services = get(hub, KUBELET, "/api/v1/services").await;
    assert_eq!(services, (200, Bytes::from_static(SERVICES)));
}

#[tokio::test]
async fn filters_on_list_watch_and_offline_answers_are_filtered() {
    let dir = tempfile::tempdir().unwrap();
    test_hub::pki(dir.path());
    let upstream = test_hub::fake_apiserver(dir.path(), recorded).await;
    let settings = FilterSettings {
        masterservice: Some("169.254.2.1:10268".parse().unwrap()),
        topology: true,
        pool_label: "topology.kubernetes.io/zone".into(),
        node_name: "dummyNode".into(),
    };
    let (hub, state) = test_hub::hub(dir.path(), upstream, "kubelet,kube-proxy", settings).await;
    // Context reaches the cache the way it does in a cluster: kubelet gets
    // its node (zone-a), kube-proxy the Service (labelled for topology).
    assert_eq!(get(hub, KUBELET, "/api/v1/nodes/dummyNode").await.0, 200);
    let kube_dns = "/api/v1/namespaces/kube-system/services/kube-dns";
    assert_eq!(
        get(hub, KUBE_PROXY, kube_dns).await,
        (200, Bytes::from_static(KUBE_DNS))
    );

    let (status, list) = get(hub, KUBE_PROXY, SLICE_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(
        endpoint_ips(&list, 1),
        ["10.244.0.3"],
        "zone-b endpoint hidden"
    );
    assert_eq!(
        endpoint_ips(&list, 0),
        ["172.18.0.2"],
        "unlabelled Service untouched"
    );

    let (status, events) = get(hub, KUBE_PROXY, &format!("{SLICE_PATH}?watch=1")).await;
    assert_eq!(status, 200);
    let events: Vec<Value> = events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(
        events[0]["object"]["endpoints"].as_array().unwrap().len(),
        1
    );
    assert_eq!(events[1]["type"], "MODIFIED", "the endpoint left the pool");
    assert_eq!(events[1]["object"]["endpoints"], json!([]));

    let (_, services) = get(hub, KUBELET, "/api/v1/services").await;
    let services: Value = serde_json::from_slice(&services).unwrap();
    assert_eq!(services["items"][0]["spec"]["clusterIP"], "169.254.2.1");
    assert_eq!(services["items"][0]["spec"]["ports"][0]["port"], 10268);

    // The cache kept upstream's objects, unfiltered.
    let stored = state
        .cache
        .stored_object(
            "kube-proxy",
            ("discovery.k8s.io", "v1", "endpointslices"),
            "kube-system",
            "kube-dns-22mvb",
        )
        .unwrap()
        .unwrap();
    let stored: Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["endpoints"].as_array().unwrap().len(), 2);

    // Offline, answers from the cache are filtered the same way.
    state.health.traffic_failed(OfflineReason::Timeout, "test");
    assert!(!state.health.current().forwards());
    let (status, list) = get(hub, KUBE_PROXY, SLICE_PATH).await;
    assert_eq!(status, 200);
    assert_eq!(
        endpoint_ips(&list, 1),
        Vec::<String>::new(),
        "both now in zone-b"
    );
    let kubernetes = "/api/v1/namespaces/default/services/kubernetes";
    let (status, service) = get(hub, KUBELET, kubernetes).await;
    assert_eq!(status, 200);
    let service: Value = serde_json::from_slice(&service).unwrap();
    assert_eq!(service["spec"]["clusterIPs"], json!(["169.254.2.1"]));
}
