//! The cache end to end on a real database in a temp dir: recording, offline answers,
//! durability across reopen, quota, GC and group commit.

use super::*;
use serde_json::{json, Value};

pub(crate) fn config(dir: &std::path::Path) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: 64 * 1024 * 1024,
        gc_after: Duration::from_secs(3600),
        commit_interval: Duration::from_millis(2),
    }
}

pub(crate) fn pod(ns: &str, name: &str, rv: u64, app: &str, node: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string(),
                     "labels": {"app": app}},
        "spec": {"nodeName": node},
        "status": {"phase": "Running"}
    })
}

pub(crate) fn pod_list(rv: u64, items: &[Value]) -> Bytes {
    let items: Vec<Value> = items
        .iter()
        .map(|p| {
            let mut p = p.clone();
            let obj = p.as_object_mut().unwrap();
            obj.remove("kind");
            obj.remove("apiVersion");
            p
        })
        .collect();
    let list = json!({"kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    Bytes::from(list.to_string())
}

pub(crate) fn event(kind: &str, object: &Value) -> Bytes {
    Bytes::from(json!({"type": kind, "object": object}).to_string())
}

pub(crate) fn req(method: &str, target: &str) -> RequestInfo {
    RequestInfo::parse(method, target).unwrap()
}

pub(crate) fn answer(
    cache: &AutonomyCache,
    component: &str,
    r: &RequestInfo,
    body: &[u8],
) -> (u16, Value) {
    match cache.offline_answer(component, r, body) {
        OfflineAnswer::Respond { status, body } => (status, serde_json::from_slice(&body).unwrap()),
        OfflineAnswer::HoldWatch => panic!("unexpected HoldWatch for {}", r.path),
    }
}

pub(crate) fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn cache_directory_is_made_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _cache = AutonomyCache::open(config(&cache_dir)).unwrap();
    let mode = std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[tokio::test]
async fn get_survives_reopen_and_misses_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let get = req("GET", "/api/v1/namespaces/d/pods/a");
    cache
        .record_response(
            "kubelet",
            &get,
            Bytes::from(pod("d", "a", 5, "web", "n1").to_string()),
        )
        .await
        .unwrap();
    drop(cache);
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let (status, body) = answer(&cache, "kubelet", &get, b"");
    assert_eq!(
        (status, body["metadata"]["resourceVersion"].as_str()),
        (200, Some("5"))
    );
    let (status, body) = answer(&cache, "kube-proxy", &get, b"");
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("NotFound")),
        "per component"
    );
    let (status, _) = answer(
        &cache,
        "kubelet",
        &req("GET", "/api/v1/namespaces/d/pods/b"),
        b"",
    );
    assert_eq!(status, 404);
    assert!(cache.stats().objects >= 1);
}

#[tokio::test]
async fn list_replaces_its_set_and_two_selectors_coexist() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let web = req("GET", "/api/v1/pods?labelSelector=app%3Dweb");
    let db = req("GET", "/api/v1/pods?labelSelector=app%3Ddb");
    let (a, b, c) = (
        pod("d", "a", 1, "web", "n1"),
        pod("d", "b", 2, "web", "n1"),
        pod("d", "c", 3, "db", "n1"),
    );
    cache
        .record_response("kubelet", &web, pod_list(10, &[a.clone(), b.clone()]))
        .await
        .unwrap();
    cache
        .record_response("kubelet", &db, pod_list(11, std::slice::from_ref(&c)))
        .await
        .unwrap();
    let (status, list) = answer(&cache, "kubelet", &web, b"");
    assert_eq!(
        (status, names(&list)),
        (200, vec!["a".to_string(), "b".into()])
    );
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"][0]["kind"], "Pod", "items regain their kind");
    assert_eq!(list["metadata"]["resourceVersion"], "10");
    assert_eq!(names(&answer(&cache, "kubelet", &db, b"").1), ["c"]);
    // Upstream deleted b while we were offline: the next list drops it, db is untouched.
    cache
        .record_response("kubelet", &web, pod_list(12, std::slice::from_ref(&a)))
        .await
        .unwrap();
    assert_eq!(names(&answer(&cache, "kubelet", &web, b"").1), ["a"]);
    assert_eq!(names(&answer(&cache, "kubelet", &db, b"").1), ["c"]);
    // An unseen selector is answered from the union of the sets, filtered.
    let all = req("GET", "/api/v1/pods");
    assert_eq!(names(&answer(&cache, "kubelet", &all, b"").1), ["a", "c"]);
    let not_web = req("GET", "/api/v1/pods?labelSelector=app%21%3Dweb");
    assert_eq!(names(&answer(&cache, "kubelet", &not_web, b"").1), ["c"]);
    // A malformed list changes nothing.
    let err = cache
        .record_response("kubelet", &web, Bytes::from_static(b"{\"items\":["))
        .await;
    assert!(matches!(err, Err(CacheError::BadJson { .. })), "{err:?}");
    assert_eq!(names(&answer(&cache, "kubelet", &web, b"").1), ["a"]);
}

#[tokio::test]
async fn watch_events_respect_resource_version_order() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let list = req("GET", "/api/v1/namespaces/d/pods");
    let watch = req(
        "GET",
        "/api/v1/namespaces/d/pods?watch=true&resourceVersion=10",
    );
    cache
        .record_response(
            "kubelet",
            &list,
            pod_list(10, &[pod("d", "a", 5, "web", "n1")]),
        )
        .await
        .unwrap();
    let record = |e: Bytes| cache.record_watch_event("kubelet", &watch, e);
    record(event("MODIFIED", &pod("d", "a", 12, "v12", "n1")))
        .await
        .unwrap();
    record(event("MODIFIED", &pod("d", "a", 11, "stale", "n1")))
        .await
        .unwrap();
    record(event("ADDED", &pod("d", "b", 13, "web", "n1")))
        .await
        .unwrap();
    let (_, body) = answer(&cache, "kubelet", &list, b"");
    assert_eq!(names(&body), ["a", "b"]);
    assert_eq!(
        body["items"][0]["metadata"]["labels"]["app"], "v12",
        "older event ignored"
    );
    assert_eq!(body["metadata"]["resourceVersion"], "13");
    record(event("DELETED", &pod("d", "b", 14, "web", "n1")))
        .await
        .unwrap();
    record(event(
        "BOOKMARK",
        &json!({"kind": "Pod", "metadata": {"resourceVersion": "20"}}),
    ))
    .await
    .unwrap();
    record(event("ERROR", &json!({"kind": "Status", "code": 410})))
        .await
        .unwrap();
    let bad = record(Bytes::from_static(
        b"{\"type\":\"ADDED\",\"object\":{\"metadata\":{}}}",
    ))
    .await;
    assert!(matches!(bad, Err(CacheError::BadJson { .. })));
    let (_, body) = answer(&cache, "kubelet", &list, b"");
    assert_eq!(names(&body), ["a"]);
    assert_eq!(
        body["metadata"]["resourceVersion"], "20",
        "bookmark advances the list"
    );
    let get = req("GET", "/api/v1/namespaces/d/pods/b");
    assert_eq!(
        answer(&cache, "kubelet", &get, b"").0,
        404,
        "deleted object is gone"
    );
}

#[tokio::test]
async fn group_commit_resolves_every_future_in_few_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.commit_interval = Duration::from_millis(20);
    let cache = AutonomyCache::open(cfg).unwrap();
    let watch = req("GET", "/api/v1/pods?watch=true");
    let before = cache.stats().commits;
    let writes = (0..200u64).map(|i| {
        let cache = cache.clone();
        let watch = watch.clone();
        tokio::spawn(async move {
            let obj = pod("d", &format!("p{i}"), 100 + i, "web", "n1");
            cache
                .record_watch_event("kubelet", &watch, event("ADDED", &obj))
                .await
        })
    });
    for write in futures_join(writes.collect()).await {
        write.unwrap();
    }
    let commits = cache.stats().commits - before;
    assert!(
        commits < 200,
        "{commits} commits for 200 writes: no batching"
    );
    drop(cache);
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let (_, list) = answer(&cache, "kubelet", &req("GET", "/api/v1/pods"), b"");
    assert_eq!(names(&list).len(), 200, "every resolved write is durable");
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn quota_refuses_growth_but_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_bytes = 4 * 1024;
    let cache = AutonomyCache::open(cfg).unwrap();
    let watch = req("GET", "/api/v1/pods?watch=true");
    let mut refused = 0;
    for i in 0..40u64 {
        let obj = pod("d", &format!("p{i}"), i + 1, "web", "n1");
        match cache
            .record_watch_event("kubelet", &watch, event("ADDED", &obj))
            .await
        {
            Ok(()) => {}
            Err(CacheError::QuotaExceeded { max, .. }) => {
                assert_eq!(max, 4096);
                refused += 1;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0 && refused < 40, "refused {refused}");
    let stats = cache.stats();
    assert!(stats.bytes_used <= 4096, "{stats:?}");
    assert_eq!(stats.refused_writes, refused);
    let (status, list) = answer(&cache, "kubelet", &req("GET", "/api/v1/pods"), b"");
    assert_eq!(status, 200);
    assert_eq!(names(&list).len(), 40 - refused as usize);
    // Deletions always go through and make room again.
    cache
        .record_watch_event(
            "kubelet",
            &watch,
            event("DELETED", &pod("d", "p0", 99, "web", "n1")),
        )
        .await
        .unwrap();
    assert!(cache.stats().bytes_used < stats.bytes_used);
}

#[tokio::test]
async fn idle_components_are_collected_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let get = req("GET", "/api/v1/namespaces/d/pods/a");
    let body = Bytes::from(pod("d", "a", 1, "web", "n1").to_string());
    cache
        .record_response("old-agent", &get, body.clone())
        .await
        .unwrap();
    cache.record_response("kubelet", &get, body).await.unwrap();
    let used = cache.stats().bytes_used;
    drop(cache);
    // Make "old-agent" idle: kubelet asks again after the cutoff, old-agent does not.
    std::thread::sleep(Duration::from_millis(2100));
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let _ = cache.offline_answer("kubelet", &get, b"");
    drop(cache);
    let mut cfg = config(dir.path());
    cfg.gc_after = Duration::from_secs(1);
    let cache = AutonomyCache::open(cfg).unwrap();
    assert_eq!(answer(&cache, "old-agent", &get, b"").0, 404);
    assert_eq!(answer(&cache, "kubelet", &get, b"").0, 200);
    assert!(cache.stats().bytes_used < used);
}

#[tokio::test]
async fn pages_of_a_paginated_list_merge_instead_of_replacing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let list = req("GET", "/api/v1/pods?limit=1");
    let first_page = json!({"kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "5", "continue": "token-1"},
        "items": [pod("d", "a", 1, "web", "n1")]});
    cache
        .record_response("kubelet", &list, Bytes::from(first_page.to_string()))
        .await
        .unwrap();
    let next = req("GET", "/api/v1/pods?limit=1&continue=token-1");
    assert_eq!(next.continue_token.as_deref(), Some("token-1"));
    cache
        .record_response(
            "kubelet",
            &next,
            pod_list(5, &[pod("d", "b", 2, "web", "n1")]),
        )
        .await
        .unwrap();
    let all = req("GET", "/api/v1/pods");
    assert_eq!(names(&answer(&cache, "kubelet", &all, b"").1), ["a", "b"]);
    // A full list replaces the set again.
    cache
        .record_response(
            "kubelet",
            &all,
            pod_list(6, &[pod("d", "b", 2, "web", "n1")]),
        )
        .await
        .unwrap();
    assert_eq!(names(&answer(&cache, "kubelet", &all, b"").1), ["b"]);
}

#[tokio::test]
async fn stored_objects_are_read_from_gets_and_lists_per_component() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let node = json!({"kind": "Node", "apiVersion": "v1",
        "metadata": {"name": "edge-1", "resourceVersion": "7",
                     "labels": {"topology.kubernetes.io/zone": "z1"}}});
    let get = req("GET", "/api/v1/nodes/edge-1");
    let body = Bytes::from(node.to_string());
    cache
        .record_response("kubelet", &get, body.clone())
        .await
        .unwrap();
    let list = req("GET", "/api/v1/namespaces/d/pods");
    let pods = pod_list(4, &[pod("d", "a", 3, "web", "edge-1")]);
    cache
        .record_response("kube-proxy", &list, pods)
        .await
        .unwrap();
    let found = cache.stored_object("kubelet", ("", "v1", "nodes"), "", "edge-1");
    assert_eq!(found.unwrap(), Some(body));
    let other = cache.stored_object("kube-proxy", ("", "v1", "nodes"), "", "edge-1");
    assert_eq!(other.unwrap(), None, "per component");
    let from_list = cache
        .stored_object("kube-proxy", ("", "v1", "pods"), "d", "a")
        .unwrap()
        .unwrap();
    let from_list: Value = serde_json::from_slice(&from_list).unwrap();
    assert_eq!(from_list["metadata"]["resourceVersion"], "3");
    let disabled = AutonomyCache::disabled("test".into());
    assert_eq!(
        disabled
            .stored_object("kubelet", ("", "v1", "nodes"), "", "edge-1")
            .unwrap(),
        None
    );
}
