//! Writes through the API (POST and PUT, and PATCH via PUT): name, namespace and
//! resourceVersion checks with the apiserver's errors.

use std::sync::Arc;

use serde_json::Value;

use super::{ApiError, Res, Store};
use crate::k8s::meta::{meta_str, metadata_mut};

impl Store {
    /// Creates a new object (POST): 409 if the name is taken; `generateName` is honoured.
    pub fn create(
        &mut self,
        res: &Res,
        namespace: Option<&str>,
        mut body: Value,
    ) -> Result<Arc<Value>, ApiError> {
        if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::BadRequest(
                "resourceVersion should not be set on objects to be created".into(),
            ));
        }
        check_namespace(&body, namespace)?;
        let name = match meta_str(&body, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => match meta_str(&body, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{:05x}", self.uid_counter + 1),
                None => {
                    return Err(ApiError::BadRequest(
                        "metadata.name: Required value: name or generateName is required".into(),
                    ))
                }
            },
        };
        if self.get(res, namespace, &name).is_some() {
            return Err(ApiError::AlreadyExists {
                resource: res.resource.clone(),
                name,
            });
        }
        if let Some(ns) = namespace {
            metadata_mut(&mut body).insert("namespace".into(), Value::String(ns.into()));
        }
        if let Some(ns) = namespace {
            self.ensure_namespace(ns);
        }
        Ok(self.commit(res, namespace, &name, body, None))
    }

    /// Replaces an object (PUT): 404 if absent, 409 if the body's resourceVersion is stale.
    ///
    /// With `status_only` (the `/status` subresource) only `status` is taken from the body.
    /// An update that changes nothing keeps the resourceVersion and emits no event.
    pub fn update(
        &mut self,
        res: &Res,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        if meta_str(&body, "name").is_some_and(|n| n != name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&body, "name").unwrap_or_default()
            )));
        }
        check_namespace(&body, namespace)?;
        let stored = self
            .get(res, namespace, name)
            .ok_or_else(|| ApiError::NotFound {
                resource: res.resource.clone(),
                name: name.to_owned(),
            })?;
        let body_rv = meta_str(&body, "resourceVersion").filter(|rv| !rv.is_empty());
        if body_rv.is_some_and(|rv| Some(rv) != meta_str(&stored, "resourceVersion")) {
            return Err(ApiError::Conflict {
                resource: res.resource.clone(),
                name: name.to_owned(),
            });
        }
        let mut next = if status_only {
            let mut next = (*stored).clone();
            if let (Value::Object(map), Some(status)) = (&mut next, body.get("status")) {
                map.insert("status".into(), status.clone());
            }
            next
        } else {
            body
        };
        if let Some(ns) = namespace {
            metadata_mut(&mut next).insert("namespace".into(), Value::String(ns.into()));
        }
        if same_content(&stored, &next) {
            return Ok(stored);
        }
        Ok(self.commit(res, namespace, name, next, Some(stored)))
    }
}

/// 400 when the body names another namespace than the URL.
fn check_namespace(body: &Value, namespace: Option<&str>) -> Result<(), ApiError> {
    match (
        meta_str(body, "namespace").filter(|n| !n.is_empty()),
        namespace,
    ) {
        (Some(body_ns), Some(url_ns)) if body_ns != url_ns => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether two versions of an object differ only in server-set metadata.
fn same_content(stored: &Value, next: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let meta = metadata_mut(&mut v);
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(field);
        }
        if let Value::Object(map) = &mut v {
            map.remove("kind");
            map.remove("apiVersion");
        }
        v
    };
    strip(stored) == strip(next)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pod, store};
    use super::*;
    use crate::k8s::store::object_rv;
    use serde_json::json;

    #[test]
    fn stale_update_conflicts_and_no_op_update_keeps_rv() {
        let mut s = store();
        let a = s
            .upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        let same = s.update(&Res::pods(), Some("ns"), "a", (*a).clone(), false);
        assert_eq!(same.map(|o| object_rv(&o)), Ok(object_rv(&a)));
        let mut changed = (*a).clone();
        changed["spec"]["nodeName"] = json!("n2");
        let updated = s.update(&Res::pods(), Some("ns"), "a", changed.clone(), false);
        assert!(updated.is_ok());
        let stale = s.update(&Res::pods(), Some("ns"), "a", changed, false);
        assert!(matches!(stale, Err(ApiError::Conflict { .. })));
    }
}
