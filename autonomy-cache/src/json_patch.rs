//! JSON Patch (RFC 6902, `application/json-patch+json`): a list of operations on
//! JSON pointers (RFC 6901), applied in order; any failing operation fails the patch
//! and leaves the target unchanged (the caller keeps its copy).

use serde_json::{Map, Value};

/// Most operations one patch may carry.
pub const MAX_OPERATIONS: usize = 10_000;

/// Why a JSON patch cannot be applied (the node proxy answers 422 or 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPatchError {
    /// The document is not a list of operation objects.
    #[error("a JSON patch must be a list of operation objects")]
    NotAList,
    /// More than [`MAX_OPERATIONS`].
    #[error("a JSON patch may carry at most {max} operations")]
    TooManyOperations { max: usize },
    /// An operation without `op`, `path` (or `from`/`value` where needed), or an unknown `op`.
    #[error("JSON patch operation {index} is invalid: {reason}")]
    BadOperation { index: usize, reason: String },
    /// A pointer that is not `""` or does not start with `/`.
    #[error("invalid JSON pointer {pointer:?}")]
    BadPointer { pointer: String },
    /// The pointer names nothing in the document.
    #[error("JSON patch operation {index} ({op}): path {pointer:?} does not exist")]
    Missing {
        index: usize,
        op: String,
        pointer: String,
    },
    /// A `test` operation found another value.
    #[error("JSON patch operation {index}: test of {pointer:?} failed")]
    TestFailed { index: usize, pointer: String },
}

/// `target` with the JSON `patch` applied.
pub fn apply(target: &Value, patch: &Value) -> Result<Value, JsonPatchError> {
    let Value::Array(ops) = patch else {
        return Err(JsonPatchError::NotAList);
    };
    if ops.len() > MAX_OPERATIONS {
        return Err(JsonPatchError::TooManyOperations {
            max: MAX_OPERATIONS,
        });
    }
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        apply_one(&mut doc, index, op)?;
    }
    Ok(doc)
}

fn field<'v>(
    op: &'v Map<String, Value>,
    index: usize,
    name: &str,
) -> Result<&'v Value, JsonPatchError> {
    op.get(name).ok_or_else(|| JsonPatchError::BadOperation {
        index,
        reason: format!("missing {name:?}"),
    })
}

fn pointer_field<'v>(
    op: &'v Map<String, Value>,
    index: usize,
    name: &str,
) -> Result<&'v str, JsonPatchError> {
    field(op, index, name)?
        .as_str()
        .ok_or_else(|| JsonPatchError::BadOperation {
            index,
            reason: format!("{name:?} is not a string"),
        })
}

fn apply_one(doc: &mut Value, index: usize, op: &Value) -> Result<(), JsonPatchError> {
    let Value::Object(op) = op else {
        return Err(JsonPatchError::NotAList);
    };
    let name = field(op, index, "op")?
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = pointer_field(op, index, "path")?;
    let missing = |pointer: &str| JsonPatchError::Missing {
        index,
        op: name.clone(),
        pointer: pointer.to_string(),
    };
    match name.as_str() {
        "add" => {
            add(doc, path, field(op, index, "value")?.clone())?.ok_or_else(|| missing(path))?
        }
        "remove" => {
            remove(doc, path)?.ok_or_else(|| missing(path))?;
        }
        "replace" => {
            let value = field(op, index, "value")?.clone();
            let slot = doc
                .pointer_mut(&checked(path)?)
                .ok_or_else(|| missing(path))?;
            *slot = value;
        }
        "move" => {
            let from = pointer_field(op, index, "from")?;
            if path.starts_with(from) && path[from.len()..].starts_with('/') {
                return Err(JsonPatchError::BadOperation {
                    index,
                    reason: "cannot move a value into itself".into(),
                });
            }
            let value = remove(doc, from)?.ok_or_else(|| missing(from))?;
            add(doc, path, value)?.ok_or_else(|| missing(path))?;
        }
        "copy" => {
            let from = pointer_field(op, index, "from")?;
            let value = doc
                .pointer(&checked(from)?)
                .cloned()
                .ok_or_else(|| missing(from))?;
            add(doc, path, value)?.ok_or_else(|| missing(path))?;
        }
        "test" => {
            let expected = field(op, index, "value")?;
            let found = doc.pointer(&checked(path)?).ok_or_else(|| missing(path))?;
            if found != expected {
                return Err(JsonPatchError::TestFailed {
                    index,
                    pointer: path.to_string(),
                });
            }
        }
        other => {
            return Err(JsonPatchError::BadOperation {
                index,
                reason: format!("unknown op {other:?}"),
            })
        }
    }
    Ok(())
}

fn checked(pointer: &str) -> Result<String, JsonPatchError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(pointer.to_string())
    } else {
        Err(JsonPatchError::BadPointer {
            pointer: pointer.to_string(),
        })
    }
}

/// Splits `/a/b/c` into the parent pointer and the unescaped last token.
fn split(pointer: &str) -> Result<Option<(&str, String)>, JsonPatchError> {
    checked(pointer)?;
    Ok(pointer.rfind('/').map(|at| {
        let token = pointer[at + 1..].replace("~1", "/").replace("~0", "~");
        (&pointer[..at], token)
    }))
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if token == "-" {
        return allow_end.then_some(len);
    }
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    let i: usize = token.parse().ok()?;
    let limit = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    (i <= limit && (allow_end || len > 0)).then_some(i)
}

/// `Ok(None)` when the parent does not exist or the index is out of range.
fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<Option<()>, JsonPatchError> {
    let Some((parent, token)) = split(pointer)? else {
        // The empty pointer replaces the whole document.
        *doc = value;
        return Ok(Some(()));
    };
    Ok(match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Some(())
        }
        Some(Value::Array(items)) => array_index(&token, items.len(), true).map(|at| {
            items.insert(at, value);
        }),
        _ => None,
    })
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Option<Value>, JsonPatchError> {
    let Some((parent, token)) = split(pointer)? else {
        return Ok(Some(std::mem::take(doc)));
    };
    Ok(match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token),
        Some(Value::Array(items)) => {
            array_index(&token, items.len(), false).map(|at| items.remove(at))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc_6902_operations() {
        let doc = json!({"status": {"phase": "Running", "conditions": [{"type": "A"}]}, "a/b": 1});
        let patch = json!([
            {"op": "test", "path": "/status/phase", "value": "Running"},
            {"op": "replace", "path": "/status/phase", "value": "Failed"},
            {"op": "add", "path": "/status/conditions/-", "value": {"type": "B"}},
            {"op": "add", "path": "/status/conditions/0", "value": {"type": "Z"}},
            {"op": "remove", "path": "/status/conditions/1"},
            {"op": "copy", "from": "/status/phase", "path": "/status/reason"},
            {"op": "move", "from": "/a~1b", "path": "/moved"}
        ]);
        assert_eq!(
            apply(&doc, &patch).unwrap(),
            json!({"status": {"phase": "Failed", "reason": "Failed",
                              "conditions": [{"type": "Z"}, {"type": "B"}]}, "moved": 1})
        );
    }

    #[test]
    fn failures_name_the_operation() {
        let doc = json!({"status": {"phase": "Running", "list": []}});
        let cases = [
            (json!({"op": "add"}), "must be a list"),
            (
                json!([{"op": "test", "path": "/status/phase", "value": "x"}]),
                "test of",
            ),
            (
                json!([{"op": "remove", "path": "/status/nope"}]),
                "does not exist",
            ),
            (
                json!([{"op": "replace", "path": "/nope/x", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "/status/list/5", "value": 1}]),
                "does not exist",
            ),
            (
                json!([{"op": "remove", "path": "/status/list/0"}]),
                "does not exist",
            ),
            (
                json!([{"op": "add", "path": "/status/list/01", "value": 1}]),
                "does not exist",
            ),
            (json!([{"op": "frob", "path": "/x"}]), "unknown op"),
            (
                json!([{"op": "add", "path": "x", "value": 1}]),
                "invalid JSON pointer",
            ),
            (
                json!([{"op": "move", "from": "/status", "path": "/status/x"}]),
                "into itself",
            ),
            (
                json!([{"op": "replace", "path": "/status"}]),
                "missing \"value\"",
            ),
        ];
        for (patch, message) in cases {
            let err = apply(&doc, &patch).unwrap_err();
            assert!(err.to_string().contains(message), "{patch}: {err}");
        }
    }
}
