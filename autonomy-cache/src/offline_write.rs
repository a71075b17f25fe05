//! The writes kubelet depends on, acknowledged offline from the cached object: its
//! node Lease, its node's status and its pods' status (PUT, or PATCH of any patch
//! type the apiserver takes except server-side apply). The result is answered with
//! 200, as the apiserver would answer it, and stored, so a kubelet restarted offline
//! reads back the status it last wrote.

use bytes::Bytes;
use serde_json::Value;

use super::apply::WriteOp;
use super::json_patch::{self, JsonPatchError};
use super::keys::ResourceKey;
use super::object;
use super::offline::{respond, status, storage_failed, unavailable};
use super::request::{RequestInfo, RequestKind, Verb};
use super::store::Store;
use super::strategic_merge::{self, Schema, SmpError};
use super::OfflineAnswer;

/// What a write's body is, by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// PUT: the whole new object.
    Object,
    /// `application/merge-patch+json` (RFC 7386).
    MergePatch,
    /// `application/strategic-merge-patch+json`.
    StrategicMergePatch,
    /// `application/json-patch+json` (RFC 6902).
    JsonPatch,
}

const PATCH_TYPES: &str = "application/json-patch+json, application/merge-patch+json, \
                           application/strategic-merge-patch+json";

/// Whether `req` is one of the writes acknowledged offline.
pub(crate) fn acknowledged(req: &RequestInfo) -> bool {
    let RequestKind::Resource {
        group,
        namespace,
        resource,
        name,
        subresource,
        ..
    } = &req.kind
    else {
        return false;
    };
    let lease = group == "coordination.k8s.io"
        && resource == "leases"
        && namespace.as_deref() == Some("kube-node-lease")
        && subresource.is_none();
    let status = group.is_empty()
        && matches!(resource.as_str(), "nodes" | "pods")
        && subresource.as_deref() == Some("status");
    (lease || status) && name.is_some() && matches!(req.verb, Verb::Update | Verb::Patch)
}

/// The answer to an acknowledged write and the write that stores its result.
pub(crate) fn answer(
    store: &Store,
    key: &ResourceKey,
    req: &RequestInfo,
    body: &[u8],
) -> (OfflineAnswer, Option<WriteOp>) {
    match updated(store, key, req, body) {
        Ok((json, object)) => {
            let op = WriteOp::Acknowledged {
                collection: key.collection.clone(),
                object,
            };
            (respond(200, json), Some(op))
        }
        Err(answer) => (answer, None),
    }
}

fn updated(
    store: &Store,
    key: &ResourceKey,
    req: &RequestInfo,
    body: &[u8],
) -> Result<(Bytes, object::StoredObject), OfflineAnswer> {
    let RequestKind::Resource {
        group,
        resource,
        subresource,
        ..
    } = &req.kind
    else {
        return Err(unavailable(req, "is not served from the node cache"));
    };
    let kind = body_kind(req)?;
    let name = key.name.as_deref().unwrap_or_default();
    let cached = match store.object(&key.collection, &key.namespace, name) {
        Ok(Some(found)) => found,
        Ok(None) => return Err(unavailable(req, "has no cached object to acknowledge")),
        Err(err) => return Err(storage_failed(&err)),
    };
    let cached: Value = serde_json::from_slice(&cached.json).map_err(|e| {
        let message = format!("offline mode: the cached {resource} \"{name}\" is not JSON: {e}");
        status(503, "ServiceUnavailable", &message)
    })?;
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        status(
            400,
            "BadRequest",
            &format!("the request body is not JSON: {e}"),
        )
    })?;
    let schema = Schema::for_resource(group, resource);
    let mut result = match kind {
        Body::Object if request.is_object() => request,
        Body::Object => {
            return Err(status(
                400,
                "BadRequest",
                "the request body is not a JSON object",
            ))
        }
        Body::MergePatch if request.is_object() => {
            let mut target = cached.clone();
            merge(&mut target, &request);
            target
        }
        Body::MergePatch => {
            return Err(status(
                400,
                "BadRequest",
                "a merge patch must be a JSON object",
            ))
        }
        Body::StrategicMergePatch => {
            strategic_merge::apply(&cached, &request, &schema).map_err(|e| smp_failed(&e))?
        }
        Body::JsonPatch => {
            json_patch::apply(&cached, &request).map_err(|e| json_patch_failed(&e))?
        }
    };
    if subresource.as_deref() == Some("status") {
        result = status_only(&cached, result, req, resource, name)?;
    }
    let json = Bytes::from(serde_json::to_vec(&result).map_err(|e| {
        status(
            500,
            "InternalError",
            &format!("cannot encode the result: {e}"),
        )
    })?);
    match object::parse_object(json.clone()) {
        Ok(obj) if obj.name == name => Ok((json, obj)),
        Ok(_) => Err(status(
            400,
            "BadRequest",
            "metadata.name does not match the request path",
        )),
        Err(err) => Err(status(400, "BadRequest", &err.to_string())),
    }
}

/// The body type by verb and `Content-Type`, as the apiserver accepts them.
fn body_kind(req: &RequestInfo) -> Result<Body, OfflineAnswer> {
    let media = req.content_type.as_deref();
    match (req.verb, media) {
        (Verb::Update, None | Some("application/json")) => Ok(Body::Object),
        (Verb::Patch, Some("application/merge-patch+json")) => Ok(Body::MergePatch),
        (Verb::Patch, Some("application/strategic-merge-patch+json")) => {
            Ok(Body::StrategicMergePatch)
        }
        (Verb::Patch, Some("application/json-patch+json")) => Ok(Body::JsonPatch),
        (Verb::Patch, Some("application/apply-patch+yaml")) => Err(unavailable(
            req,
            "is a server-side apply, which needs the apiserver's field managers",
        )),
        (Verb::Patch, other) => Err(status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format ({}) - accepted media types include: {PATCH_TYPES}",
                other.unwrap_or("no Content-Type")
            ),
        )),
        (_, other) => Err(status(
            415,
            "UnsupportedMediaType",
            &format!(
                "offline mode: a {} body cannot be applied from the node cache; it takes application/json",
                other.unwrap_or("non-JSON")
            ),
        )),
    }
}

fn smp_failed(err: &SmpError) -> OfflineAnswer {
    let code = match err {
        SmpError::TooDeep { .. } | SmpError::TooManyItems { .. } => 413,
        _ => 400,
    };
    let reason = if code == 413 {
        "RequestEntityTooLarge"
    } else {
        "BadRequest"
    };
    status(code, reason, &err.to_string())
}

fn json_patch_failed(err: &JsonPatchError) -> OfflineAnswer {
    // The apiserver answers a patch that does not apply with 422, a malformed one with 400.
    match err {
        JsonPatchError::Missing { .. } | JsonPatchError::TestFailed { .. } => {
            status(422, "Invalid", &err.to_string())
        }
        JsonPatchError::TooManyOperations { .. } => {
            status(413, "RequestEntityTooLarge", &err.to_string())
        }
        _ => status(400, "BadRequest", &err.to_string()),
    }
}

/// A write through `/status`, as the apiserver's pod and node status strategies take
/// it: `status` comes from the request (a pod's `qosClass` is kept when the request
/// drops it), and of the metadata only `labels` and `annotations`; spec and every
/// other metadata field (uid, resourceVersion, ownerReferences, finalizers,
/// timestamps) stay as cached. A changed `metadata.uid`
/// is refused with 422 (immutable), a PUT with another `resourceVersion` with 409.
fn status_only(
    cached: &Value,
    updated: Value,
    req: &RequestInfo,
    resource: &str,
    name: &str,
) -> Result<Value, OfflineAnswer> {
    let meta = |v: &Value, field: &str| v.get("metadata").and_then(|m| m.get(field)).cloned();
    if let (Some(old), Some(new)) = (meta(cached, "uid"), meta(&updated, "uid")) {
        if old != new {
            let message = format!(
                "{resource} \"{name}\" is invalid: metadata.uid: Invalid value: {new}: field is immutable"
            );
            return Err(status(422, "Invalid", &message));
        }
    }
    if req.verb == Verb::Update {
        let wanted = meta(&updated, "resourceVersion").filter(|rv| rv != "");
        if wanted.is_some() && wanted != meta(cached, "resourceVersion") {
            let message = format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            );
            return Err(status(409, "Conflict", &message));
        }
    }
    let mut result = cached.clone();
    let Value::Object(out) = &mut result else {
        return Err(status(
            503,
            "ServiceUnavailable",
            "offline mode: the cached object is not a JSON object",
        ));
    };
    match updated.get("status") {
        Some(status) => out.insert("status".into(), status.clone()),
        None => out.remove("status"),
    };
    // The pod's QoS class is immutable: the apiserver backfills it when a write drops it.
    let qos = cached.get("status").and_then(|s| s.get("qosClass"));
    if let (true, Some(qos)) = (resource == "pods", qos) {
        let status = out
            .entry("status")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(status) = status {
            if matches!(status.get("qosClass"), None | Some(Value::Null))
                || status.get("qosClass").and_then(Value::as_str) == Some("")
            {
                status.insert("qosClass".into(), qos.clone());
            }
        }
    }
    if let Some(Value::Object(out_meta)) = out.get_mut("metadata") {
        for field in ["labels", "annotations"] {
            match meta(&updated, field) {
                Some(value) => out_meta.insert(field.into(), value),
                None => out_meta.remove(field),
            };
        }
    }
    Ok(result)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(map) = target {
        for (key, value) in patch {
            if value.is_null() {
                map.remove(key);
            } else {
                merge(map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
