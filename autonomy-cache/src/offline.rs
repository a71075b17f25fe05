//! What to answer while the cloud is unreachable: the reference's offline table,
//! decided from the stored data. Returns the answer plus, for acknowledged lease,
//! node-status and pod-status writes (`offline_write`), the write that keeps the
//! cached object current.

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::apply::WriteOp;
use super::error::CacheError;
use super::field_selector::{leaf_string, FieldSelector};
use super::keys::{self, ResourceKey};
use super::label_selector::LabelSelector;
use super::object::{self, ListMeta};
use super::offline_write;
use super::request::{RequestInfo, RequestKind, Verb};
use super::status::status_json;
use super::store::{SetObject, Store};
use super::OfflineAnswer;

pub(super) fn respond(status: u16, body: Bytes) -> OfflineAnswer {
    OfflineAnswer::Respond { status, body }
}

pub(super) fn status(code: u16, reason: &str, message: &str) -> OfflineAnswer {
    respond(code, status_json(code, reason, message))
}

/// The 503 for anything the cache cannot answer, naming offline mode.
pub(super) fn unavailable(req: &RequestInfo, why: &str) -> OfflineAnswer {
    let message = format!(
        "offline mode: the cloud apiserver is unreachable and {} {} {why}",
        req.verb.as_str(),
        req.path
    );
    status(503, "ServiceUnavailable", &message)
}

pub(super) fn storage_failed(err: &CacheError) -> OfflineAnswer {
    let message = format!("offline mode: the node cache cannot be read: {err}");
    status(503, "ServiceUnavailable", &message)
}

/// The offline answer for `req` from `component`, and a write to queue if any.
pub(crate) fn answer(
    store: &Store,
    component: &str,
    req: &RequestInfo,
    body: &[u8],
) -> (OfflineAnswer, Option<WriteOp>) {
    let Some(key) = ResourceKey::of(component, req) else {
        return (non_resource(store, component, req), None);
    };
    let RequestKind::Resource {
        group,
        resource,
        subresource,
        ..
    } = &req.kind
    else {
        return (non_resource(store, component, req), None);
    };
    let plain_or_status = matches!(subresource.as_deref(), None | Some("status"));
    match req.verb {
        Verb::Watch => (OfflineAnswer::HoldWatch, None),
        Verb::Get if plain_or_status => (get(store, &key, resource), None),
        Verb::List => (list(store, &key, req, group, resource), None),
        Verb::Create if resource == "events" => (events_echo(body), None),
        Verb::Update | Verb::Patch if offline_write::acknowledged(req) => {
            offline_write::answer(store, &key, req, body)
        }
        _ => (unavailable(req, "is not served from the node cache"), None),
    }
}

fn non_resource(store: &Store, component: &str, req: &RequestInfo) -> OfflineAnswer {
    if req.verb != Verb::Get {
        return unavailable(req, "is not served from the node cache");
    }
    match store.doc(component, &req.path) {
        Ok(Some(doc)) => respond(200, doc),
        Ok(None) => unavailable(req, "is not in the node cache"),
        Err(err) => storage_failed(&err),
    }
}

fn get(store: &Store, key: &ResourceKey, resource: &str) -> OfflineAnswer {
    let name = key.name.as_deref().unwrap_or_default();
    match store.object(&key.collection, &key.namespace, name) {
        Ok(Some(found)) => respond(200, found.json),
        Ok(None) => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
        Err(err) => storage_failed(&err),
    }
}

/// Which stored list sets answer a list: the one with the same scope and selectors,
/// else the union of those covering the namespace (filtered by the selectors below).
fn answering_sets(lists: Vec<(String, ListMeta)>, key: &ResourceKey) -> Vec<(String, ListMeta)> {
    if let Some(exact) = lists.iter().find(|(owner, _)| *owner == key.list_owner) {
        return vec![exact.clone()];
    }
    lists
        .into_iter()
        .filter(|(owner, _)| {
            let scope = keys::owner_namespace(owner);
            scope.is_empty() || scope == key.namespace
        })
        .collect()
}

fn list(
    store: &Store,
    key: &ResourceKey,
    req: &RequestInfo,
    group: &str,
    resource: &str,
) -> OfflineAnswer {
    let label = match LabelSelector::parse(req.label_selector.as_deref().unwrap_or_default()) {
        Ok(selector) => selector,
        Err(err) => return status(400, "BadRequest", &err.to_string()),
    };
    let field = match FieldSelector::parse(req.field_selector.as_deref().unwrap_or_default()) {
        Ok(selector) => selector,
        Err(err) => return status(400, "BadRequest", &err.to_string()),
    };
    let kubelet_pods =
        key.collection.component == "kubelet" && group.is_empty() && resource == "pods";
    let sets = match store.lists(&key.collection) {
        Ok(lists) => answering_sets(lists, key),
        Err(err) => return storage_failed(&err),
    };
    let mut newest: HashMap<Vec<u8>, SetObject> = HashMap::new();
    for (owner, _) in &sets {
        let objects = match store.set_objects(&key.collection, owner) {
            Ok(objects) => objects,
            Err(err) => return storage_failed(&err),
        };
        for obj in objects {
            if !key.namespace.is_empty() && obj.namespace() != key.namespace.as_bytes() {
                continue;
            }
            let keep_old = newest.get(&obj.ident).is_some_and(|old| {
                object::is_older(
                    obj.resource_version.as_deref(),
                    old.resource_version.as_deref(),
                )
            });
            if !keep_old {
                newest.insert(obj.ident.clone(), obj);
            }
        }
    }
    let mut items: Vec<SetObject> = newest.into_values().collect();
    items.sort_by(|a, b| a.ident.cmp(&b.ident));
    // An exact set was selected upstream (and kept so by its watch); a union is not.
    let exact = sets.len() == 1 && sets[0].0 == key.list_owner;
    if !exact && (!label.is_empty() || !field.is_empty()) {
        items.retain(|obj| selected(&obj.json, &label, &field));
    }
    if items.is_empty() && (kubelet_pods || sets.is_empty()) {
        let why = if sets.is_empty() {
            "no list of it is cached"
        } else {
            "the cached list is empty"
        };
        let code = if kubelet_pods { 404 } else { 503 };
        let reason = if kubelet_pods {
            "NotFound"
        } else {
            "ServiceUnavailable"
        };
        return status(
            code,
            reason,
            &format!("offline mode: {resource} not available: {why}"),
        );
    }
    respond(200, list_body(&sets, items))
}

/// Selector match read straight from the stored text: only the members on the
/// selectors' paths are parsed (a full `Value` per object made selector lists 10x slower).
fn selected(json: &[u8], label: &LabelSelector, field: &FieldSelector) -> bool {
    let Ok(text) = std::str::from_utf8(json) else {
        return false;
    };
    if !label.is_empty() {
        let labels = match object::raw_lookup(text, "metadata.labels") {
            Ok(Some(raw)) => serde_json::from_str::<Map<String, Value>>(raw.get()).ok(),
            Ok(None) => None,
            Err(_) => return false,
        };
        if !label.matches(labels.as_ref()) {
            return false;
        }
    }
    field.matches_with(|path| match object::raw_lookup(text, path) {
        Ok(Some(raw)) => serde_json::from_str::<Value>(raw.get())
            .ok()
            .and_then(|leaf| leaf_string(&leaf)),
        Ok(None) => Some(String::new()),
        // A non-object on the way: like a missing member.
        Err(_) => Some(String::new()),
    })
}

/// `{"kind":..,"apiVersion":..,"metadata":{"resourceVersion":..},"items":[..]}` with
/// the stored item JSON spliced in as is.
fn list_body(sets: &[(String, ListMeta)], items: Vec<SetObject>) -> Bytes {
    let pick = |f: fn(&ListMeta) -> &String, default: &str| {
        sets.iter()
            .map(|(_, meta)| f(meta).clone())
            .find(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    let kind = pick(|m| &m.kind, "List");
    let api_version = pick(|m| &m.api_version, "v1");
    let rv = sets.iter().fold(None, |acc, (_, meta)| {
        object::newest(acc, meta.resource_version.clone())
    });
    let head = serde_json::json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": {"resourceVersion": rv.unwrap_or_default()},
    })
    .to_string();
    let total: usize = items.iter().map(|i| i.json.len() + 1).sum();
    let mut out = Vec::with_capacity(head.len() + total + 16);
    out.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item.json);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

fn events_echo(body: &[u8]) -> OfflineAnswer {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(_)) => respond(201, Bytes::copy_from_slice(body)),
        _ => status(400, "BadRequest", "event body is not a JSON object"),
    }
}
