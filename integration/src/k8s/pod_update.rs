//! Pod update validation for `spec`, as kube-apiserver's `ValidatePodUpdate` does it
//! (pkg/apis/core/validation): the fake is the oracle the autonomy controller's patches are
//! checked against, so it refuses exactly what the real one refuses here.
//!
//! A pod's spec is immutable except `containers[*].image`, `initContainers[*].image`,
//! `activeDeadlineSeconds` (set, or lowered), `terminationGracePeriodSeconds` (only from a
//! negative value to 1) and `tolerations`: only additions and changes of an existing
//! toleration's `tolerationSeconds` (`validateOnlyAddedTolerations`), and
//! `tolerationSeconds` only with effect NoExecute (`ValidateTolerations`).
//! Not modelled: schedulingGates, in-place resource resize, ephemeral containers.

use serde_json::{Map, Value};

use super::status::{ApiError, FieldError, FieldErrorKind};

/// What the real message lists as changeable.
const UPDATABLE: &str = "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
const OPERATORS: [&str; 2] = ["Equal", "Exists"];

/// Checks an update of pod `name` from `old` to `new` (whole objects); 422 Invalid otherwise.
pub fn validate(name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    let empty = Value::Object(Map::new());
    let old_spec = old.get("spec").unwrap_or(&empty);
    let new_spec = new.get("spec").unwrap_or(&empty);
    let mut errors = Vec::new();
    let old_tol = list(old_spec, "tolerations");
    let new_tol = list(new_spec, "tolerations");
    errors.extend(only_added_tolerations(&old_tol, &new_tol));
    errors.extend(validate_tolerations(&new_tol));
    errors.extend(container_count(old_spec, new_spec, "containers"));
    errors.extend(container_count(old_spec, new_spec, "initContainers"));
    errors.extend(active_deadline(old_spec, new_spec));
    if errors.is_empty() && munged(old_spec, new_spec) != normalize(old_spec) {
        errors.push(FieldError {
            field: "spec".into(),
            kind: FieldErrorKind::Forbidden,
            detail: format!("pod updates may not change fields other than {UPDATABLE}"),
        });
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::Invalid {
        kind: "Pod".into(),
        name: name.to_owned(),
        causes: errors,
    })
}

fn list(spec: &Value, field: &str) -> Vec<Value> {
    spec.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Every old toleration must still be there, equal except for `tolerationSeconds`.
fn only_added_tolerations(old: &[Value], new: &[Value]) -> Option<FieldError> {
    let without_seconds = |t: &Value| {
        let mut t = normalize(t);
        if let Value::Object(m) = &mut t {
            m.remove("tolerationSeconds");
        }
        t
    };
    let all_kept = old
        .iter()
        .all(|o| new.iter().any(|n| without_seconds(n) == without_seconds(o)));
    (!all_kept).then(|| FieldError {
        field: "spec.tolerations".into(),
        kind: FieldErrorKind::Forbidden,
        detail: "existing toleration can not be modified except its tolerationSeconds".into(),
    })
}

/// `ValidateTolerations` for each toleration of the new list.
fn validate_tolerations(tolerations: &[Value]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, t) in tolerations.iter().enumerate() {
        let at = |f: &str| format!("spec.tolerations[{i}].{f}");
        let (key, op, value, effect) = (
            str_of(t, "key"),
            str_of(t, "operator"),
            str_of(t, "value"),
            str_of(t, "effect"),
        );
        if key.is_empty() && op != "Exists" {
            errors.push(FieldError {
                field: at("operator"),
                kind: FieldErrorKind::Invalid(op.into()),
                detail: "operator must be Exists when `key` is empty, which means \"match all values and all keys\"".into(),
            });
        }
        let has_seconds = t.get("tolerationSeconds").is_some_and(|s| !s.is_null());
        if has_seconds && effect != "NoExecute" {
            errors.push(FieldError {
                field: at("effect"),
                kind: FieldErrorKind::Invalid(effect.into()),
                detail: "effect must be 'NoExecute' when `tolerationSeconds` is set".into(),
            });
        }
        match op {
            "" | "Equal" => {}
            "Exists" if !value.is_empty() => errors.push(FieldError {
                field: at("operator"),
                kind: FieldErrorKind::Invalid(value.into()),
                detail: "value must be empty when `operator` is 'Exists'".into(),
            }),
            "Exists" => {}
            other => errors.push(FieldError {
                field: at("operator"),
                kind: FieldErrorKind::Unsupported(
                    other.into(),
                    OPERATORS.map(str::to_owned).to_vec(),
                ),
                detail: String::new(),
            }),
        }
        if !effect.is_empty() && !EFFECTS.contains(&effect) {
            errors.push(FieldError {
                field: at("effect"),
                kind: FieldErrorKind::Unsupported(
                    effect.into(),
                    EFFECTS.map(str::to_owned).to_vec(),
                ),
                detail: String::new(),
            });
        }
    }
    errors
}

fn container_count(old: &Value, new: &Value, field: &str) -> Option<FieldError> {
    (list(old, field).len() != list(new, field).len()).then(|| FieldError {
        field: format!("spec.{field}"),
        kind: FieldErrorKind::Forbidden,
        detail: "pod updates may not add or remove containers".into(),
    })
}

/// activeDeadlineSeconds may be set, or lowered, not removed or raised.
fn active_deadline(old: &Value, new: &Value) -> Option<FieldError> {
    let old_v = old.get("activeDeadlineSeconds").and_then(Value::as_i64);
    let new_v = new.get("activeDeadlineSeconds").and_then(Value::as_i64);
    let field = "spec.activeDeadlineSeconds".to_owned();
    match (old_v, new_v) {
        (Some(_), None) => Some(FieldError {
            field,
            kind: FieldErrorKind::Invalid("null".into()),
            detail: "must not update from a positive integer to nil value".into(),
        }),
        (Some(o), Some(n)) if n > o => Some(FieldError {
            field,
            kind: FieldErrorKind::Invalid(n.to_string()),
            detail: "must be less than or equal to previous value".into(),
        }),
        _ => None,
    }
}

/// The new spec with the changeable fields put back to the old values: must equal the old.
fn munged(old: &Value, new: &Value) -> Value {
    let mut m = new.clone();
    let Value::Object(map) = &mut m else {
        return normalize(&m);
    };
    for field in ["containers", "initContainers"] {
        let olds = list(old, field);
        if let Some(Value::Array(cs)) = map.get_mut(field) {
            for (c, o) in cs.iter_mut().zip(&olds) {
                if let (Value::Object(c), Some(image)) = (c, o.get("image")) {
                    c.insert("image".into(), image.clone());
                }
            }
        }
    }
    for field in ["activeDeadlineSeconds", "tolerations"] {
        match old.get(field) {
            Some(v) => map.insert(field.into(), v.clone()),
            None => map.remove(field),
        };
    }
    let old_grace = old
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    let new_grace = map
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if let (Some(o), Some(1)) = (old_grace, new_grace) {
        if o < 0 {
            map.insert("terminationGracePeriodSeconds".into(), o.into());
        }
    }
    normalize(&m)
}

/// JSON as Go's semantic equality sees decoded structs: null, "", [] and {} are absent.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalize(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
