//! Strategic merge patch (`application/strategic-merge-patch+json`), applied as
//! kube-apiserver applies it (apimachinery `strategicpatch`), for the fields kubelet
//! patches offline: pod and node status, plus object metadata.
//!
//! A strategic merge patch is a JSON merge patch whose lists know how to merge:
//! a list with a *merge key* is merged element by element (elements with the same
//! key value are merged, new ones added), any other list is replaced. Directives:
//! - `"$patch": "replace"` in a map: the map is replaced by the patch's map;
//!   `"$patch": "delete"`: the map is removed; `"$patch": "merge"`: the default.
//! - `{"<key>": v, "$patch": "delete"}` in a merge-key list: removes that element;
//!   a `{"$patch": "replace"}` element: the list becomes the patch's other elements.
//! - `"$setElementOrder/<field>": [...]`: the order of the merged list `<field>`.
//! - `"$retainKeys": [...]`: keys of the original map not named are cleared.
//! - `"$deleteFromPrimitiveList/<field>": [...]`: values removed from `<field>`.
//! - `null`: deletes the key.
//!
//! Order, as `normalizeElementOrder` does it: the patch's elements (or those named
//! by `$setElementOrder`) in the patch's order, the original's other elements in
//! their original order, interleaved so that both keep their relative order; an
//! element new to the list comes before the original elements not in the patch (the
//! "Update API Objects in Place Using kubectl patch" task shows the same).
//!
//! Values the original lacks are taken from the patch with their directives applied
//! and their `null` members kept (kubelet sends a new pod condition with
//! `"lastProbeTime": null`, and the apiserver's typed encoding answers it the same).
//!
//! Bounded: nesting deeper than [`MAX_DEPTH`] or lists longer than
//! [`MAX_LIST_ITEMS`] are refused; merge-key lookups are hashed, so the work is
//! linear in the sizes of target and patch. Never panics on any input.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Deepest nesting of maps and lists a patch may reach.
pub const MAX_DEPTH: usize = 64;
/// Longest list a merge may produce.
pub const MAX_LIST_ITEMS: usize = 10_000;

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

/// Why a strategic merge patch cannot be applied (the node proxy answers 400, or
/// 413 for the size limits, as a `Status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmpError {
    /// The patch document is not a JSON object.
    #[error("a strategic merge patch must be a JSON object")]
    NotAnObject,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("patch nests deeper than {max} levels at {path}")]
    TooDeep { path: String, max: usize },
    /// A merged list would be longer than [`MAX_LIST_ITEMS`].
    #[error("list {path} would have more than {max} items")]
    TooManyItems { path: String, max: usize },
    /// A `$`-prefixed key that is not a known directive.
    #[error("unknown strategic merge patch directive {directive:?} at {path}")]
    UnknownDirective { path: String, directive: String },
    /// `$patch` with a value other than replace, delete or merge.
    #[error("invalid $patch value {value} at {path} (expected replace, delete or merge)")]
    BadPatchValue { path: String, value: String },
    /// A directive whose value has the wrong shape.
    #[error("invalid {directive} at {path}: {reason}")]
    BadDirectiveValue {
        path: String,
        directive: String,
        reason: &'static str,
    },
    /// An element of a merge-key list without the key.
    #[error("an element of {path} has no merge key {key:?}")]
    MissingMergeKey { path: String, key: &'static str },
    /// An element of a merge-key list that is not a map.
    #[error("an element of {path} is not an object (the list merges on {key:?})")]
    NotAMap { path: String, key: &'static str },
    /// `{"$patch": "merge"}` as a list element (apimachinery refuses it too).
    #[error("merging lists cannot yet be specified in the patch ({path})")]
    MergeDirectiveInList { path: String },
    /// The patch's elements disagree with `$setElementOrder`.
    #[error("{path} does not match its $setElementOrder list")]
    OrderMismatch { path: String },
}

/// How a list field merges, from the field's `patchStrategy`/`patchMergeKey` tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// No `patchStrategy` (`+listType=atomic` or untagged): the patch's list replaces it.
    Replace,
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: merged element by element.
    MergeKey(&'static str),
    /// `patchStrategy:"merge"` on a list of primitives: a set union.
    MergeSet,
}

/// The merge strategy of each list field of a kind, by dotted path from the object
/// root (list elements add no segment: `status.conditions`).
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    lists: &'static [(&'static str, ListStrategy)],
}

use ListStrategy::{MergeKey, MergeSet};

/// `metadata` lists (apimachinery `meta/v1` ObjectMeta tags).
const METADATA: [(&str, ListStrategy); 2] = [
    ("metadata.ownerReferences", MergeKey("uid")),
    ("metadata.finalizers", MergeSet),
];

/// Source: kubernetes/kubernetes `staging/src/k8s.io/api/core/v1/types.go`, the
/// `patchStrategy`/`patchMergeKey` tags of `PodStatus` (read at commit 001a778f,
/// v1.30 era). `initContainerStatuses`, `containerStatuses` and
/// `ephemeralContainerStatuses` carry no patch strategy (`+listType=atomic`):
/// kubelet's two-way patch sends them whole and they are replaced.
const POD: [(&str, ListStrategy); 6] = [
    METADATA[0],
    METADATA[1],
    ("status.conditions", MergeKey("type")),
    ("status.podIPs", MergeKey("ip")),
    ("status.hostIPs", MergeKey("ip")),
    // `patchStrategy:"merge,retainKeys"`: the retainKeys half is the directive.
    ("status.resourceClaimStatuses", MergeKey("name")),
];

/// Same source, `NodeStatus`: `conditions` and `addresses` merge on `type`;
/// `images`, `volumesInUse`, `volumesAttached` and `runtimeHandlers` are atomic.
const NODE: [(&str, ListStrategy); 4] = [
    METADATA[0],
    METADATA[1],
    ("status.conditions", MergeKey("type")),
    ("status.addresses", MergeKey("type")),
];

impl Schema {
    /// core/v1 Pod.
    pub const POD: Schema = Schema { lists: &POD };
    /// core/v1 Node.
    pub const NODE: Schema = Schema { lists: &NODE };
    /// Any other built-in kind: metadata lists merge, every other list is replaced.
    pub const OBJECT: Schema = Schema { lists: &METADATA };

    /// The schema of a core-group resource (plural name).
    pub fn for_resource(group: &str, resource: &str) -> Schema {
        match (group, resource) {
            ("", "pods") => Schema::POD,
            ("", "nodes") => Schema::NODE,
            _ => Schema::OBJECT,
        }
    }

    fn list(&self, path: &str) -> ListStrategy {
        self.lists
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(ListStrategy::Replace, |(_, s)| *s)
    }
}

/// `target` with the strategic merge `patch` applied.
pub fn apply(target: &Value, patch: &Value, schema: &Schema) -> Result<Value, SmpError> {
    let Value::Object(patch) = patch else {
        return Err(SmpError::NotAnObject);
    };
    let original = match target {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let cx = Cx { schema };
    match cx.merge_map(original, patch, "", 0, false)? {
        Some(map) => Ok(Value::Object(map)),
        // `$patch: delete` at the root leaves nothing: an empty object.
        None => Ok(Value::Object(Map::new())),
    }
}

struct Cx<'s> {
    schema: &'s Schema,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        "the patch root".to_string()
    } else {
        path.to_string()
    }
}

fn string_list<'v>(
    value: &'v Value,
    path: &str,
    directive: &str,
) -> Result<Vec<&'v str>, SmpError> {
    let bad = || SmpError::BadDirectiveValue {
        path: shown(path),
        directive: directive.to_string(),
        reason: "expected a list of strings",
    };
    let Value::Array(items) = value else {
        return Err(bad());
    };
    items.iter().map(|v| v.as_str().ok_or_else(bad)).collect()
}

/// The identity of a list element: its merge key's value, or the value itself.
fn ident(value: &Value, key: Option<&str>) -> Option<String> {
    match key {
        Some(key) => value.get(key).map(Value::to_string),
        None => Some(value.to_string()),
    }
}

impl Cx<'_> {
    /// Merges `patch` into `original`; `None` when the patch deletes the map.
    /// `fresh`: the original did not exist, so `null` members are kept as values.
    fn merge_map(
        &self,
        mut original: Map<String, Value>,
        patch: &Map<String, Value>,
        path: &str,
        depth: usize,
        fresh: bool,
    ) -> Result<Option<Map<String, Value>>, SmpError> {
        check_depth(path, depth)?;
        if let Some(directive) = patch.get(PATCH) {
            match directive.as_str() {
                Some("replace") => original = Map::new(),
                Some("delete") => return Ok(None),
                Some("merge") => {}
                _ => {
                    return Err(SmpError::BadPatchValue {
                        path: shown(path),
                        value: directive.to_string(),
                    })
                }
            }
        }
        if let Some(keep) = patch.get(RETAIN_KEYS) {
            let keep = string_list(keep, path, RETAIN_KEYS)?;
            original.retain(|k, _| keep.contains(&k.as_str()));
        }
        let mut orders: HashMap<&str, &Value> = HashMap::new();
        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(DELETE_PRIMITIVES) {
                let Value::Array(remove) = value else {
                    return Err(SmpError::BadDirectiveValue {
                        path: child(path, field),
                        directive: key.clone(),
                        reason: "expected a list",
                    });
                };
                if let Some(Value::Array(items)) = original.get_mut(field) {
                    items.retain(|item| !remove.contains(item));
                }
            } else if let Some(field) = key.strip_prefix(SET_ORDER) {
                orders.insert(field, value);
            } else if key.starts_with('$') && key != PATCH && key != RETAIN_KEYS {
                return Err(SmpError::UnknownDirective {
                    path: shown(path),
                    directive: key.clone(),
                });
            }
        }
        for (key, value) in patch {
            if key.starts_with('$') {
                continue;
            }
            let at = child(path, key);
            let merged = match value {
                Value::Null if fresh => Some(Value::Null),
                Value::Null => None,
                Value::Object(sub) => {
                    let (base, sub_fresh) = match original.remove(key) {
                        Some(Value::Object(map)) => (map, false),
                        _ => (Map::new(), true),
                    };
                    self.merge_map(base, sub, &at, depth + 1, sub_fresh)?
                        .map(Value::Object)
                }
                Value::Array(items) => {
                    let base = match original.remove(key) {
                        Some(Value::Array(list)) => list,
                        _ => Vec::new(),
                    };
                    let order = orders.remove(key.as_str());
                    Some(Value::Array(self.merge_list(
                        base,
                        Some(items),
                        order,
                        &at,
                        depth + 1,
                    )?))
                }
                scalar => Some(scalar.clone()),
            };
            match merged {
                Some(v) => {
                    original.insert(key.clone(), v);
                }
                None => {
                    original.remove(key);
                }
            }
        }
        // `$setElementOrder` for a list the patch leaves alone: only reorder it.
        for (field, order) in orders {
            if let Some(Value::Array(list)) = original.remove(field) {
                let at = child(path, field);
                let list = self.merge_list(list, None, Some(order), &at, depth + 1)?;
                original.insert(field.to_string(), Value::Array(list));
            }
        }
        Ok(Some(original))
    }

    /// Merges the patch list (if any) into `original` by the field's strategy, then
    /// orders it by `$setElementOrder` (if any) or the patch.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: Option<&Vec<Value>>,
        order: Option<&Value>,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, SmpError> {
        check_depth(path, depth)?;
        let strategy = self.schema.list(path);
        let key = match strategy {
            ListStrategy::MergeKey(key) => Some(key),
            _ => None,
        };
        let server = original.clone();
        let merged = match (strategy, patch) {
            (_, None) => original,
            (ListStrategy::Replace, Some(patch)) => self.fresh_items(patch, path, depth)?,
            (ListStrategy::MergeSet, Some(patch)) => {
                let mut merged = original;
                for item in self.fresh_items(patch, path, depth)? {
                    if !merged.contains(&item) {
                        merged.push(item);
                    }
                }
                merged
            }
            (ListStrategy::MergeKey(key), Some(patch)) => {
                self.merge_keyed(original, patch, key, path, depth)?
            }
        };
        if merged.len() > MAX_LIST_ITEMS {
            return Err(SmpError::TooManyItems {
                path: shown(path),
                max: MAX_LIST_ITEMS,
            });
        }
        if strategy == ListStrategy::Replace {
            return Ok(merged);
        }
        let wanted: Vec<Value> = match (order, patch) {
            (Some(Value::Array(order)), _) => {
                check_order(order, patch, key, path)?;
                order.clone()
            }
            (Some(_), _) => {
                return Err(SmpError::BadDirectiveValue {
                    path: shown(path),
                    directive: SET_ORDER.to_string(),
                    reason: "expected a list",
                })
            }
            (None, Some(patch)) => patch
                .iter()
                .filter(|item| item.get(PATCH).is_none())
                .cloned()
                .collect(),
            (None, None) => return Ok(merged),
        };
        Ok(normalize_order(merged, &wanted, &server, key))
    }

    /// Patch elements taken as new values: directives applied, `null`s kept.
    fn fresh_items(
        &self,
        patch: &[Value],
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, SmpError> {
        check_depth(path, depth)?;
        let mut items = Vec::with_capacity(patch.len());
        for item in patch {
            match item {
                Value::Object(map) => {
                    if let Some(map) = self.merge_map(Map::new(), map, path, depth + 1, true)? {
                        items.push(Value::Object(map));
                    }
                }
                Value::Array(inner) => {
                    let inner = self.fresh_items(inner, path, depth + 1)?;
                    items.push(Value::Array(inner));
                }
                other => items.push(other.clone()),
            }
        }
        Ok(items)
    }

    fn merge_keyed(
        &self,
        mut original: Vec<Value>,
        patch: &[Value],
        key: &'static str,
        path: &str,
        depth: usize,
    ) -> Result<Vec<Value>, SmpError> {
        let mut plain = Vec::with_capacity(patch.len());
        let mut replace = false;
        for item in patch {
            let Value::Object(map) = item else {
                return Err(SmpError::NotAMap {
                    path: shown(path),
                    key,
                });
            };
            match map.get(PATCH).map(|d| (d, d.as_str())) {
                None => plain.push(map),
                Some((_, Some("delete"))) => {
                    let Some(value) = map.get(key) else {
                        return Err(SmpError::MissingMergeKey {
                            path: shown(path),
                            key,
                        });
                    };
                    original.retain(|o| o.get(key) != Some(value));
                }
                Some((_, Some("replace"))) => replace = true,
                Some((_, Some("merge"))) => {
                    return Err(SmpError::MergeDirectiveInList { path: shown(path) })
                }
                Some((value, _)) => {
                    return Err(SmpError::BadPatchValue {
                        path: shown(path),
                        value: value.to_string(),
                    })
                }
            }
        }
        if replace {
            original.clear();
        }
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, item) in original.iter().enumerate() {
            if let Some(id) = ident(item, Some(key)) {
                index.entry(id).or_insert(i);
            }
        }
        for map in plain {
            let Some(id) = ident(&Value::Object(map.clone()), Some(key)) else {
                return Err(SmpError::MissingMergeKey {
                    path: shown(path),
                    key,
                });
            };
            match index.get(&id) {
                Some(&i) => {
                    let (base, fresh) = match std::mem::take(&mut original[i]) {
                        Value::Object(base) => (base, false),
                        _ => (Map::new(), true),
                    };
                    let merged = self.merge_map(base, map, path, depth + 1, fresh)?;
                    original[i] = merged.map_or(Value::Null, Value::Object);
                }
                None => {
                    if original.len() >= MAX_LIST_ITEMS {
                        return Err(SmpError::TooManyItems {
                            path: shown(path),
                            max: MAX_LIST_ITEMS,
                        });
                    }
                    if let Some(merged) = self.merge_map(Map::new(), map, path, depth + 1, true)? {
                        index.insert(id, original.len());
                        original.push(Value::Object(merged));
                    }
                }
            }
        }
        // An element a nested `$patch: delete` removed.
        original.retain(|item| !item.is_null());
        Ok(original)
    }
}

/// The patch's elements must appear in `$setElementOrder`, in the same relative order.
fn check_order(
    order: &[Value],
    patch: Option<&Vec<Value>>,
    key: Option<&str>,
    path: &str,
) -> Result<(), SmpError> {
    let Some(patch) = patch else {
        return Ok(());
    };
    let positions: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .filter_map(|(i, v)| ident(v, key).map(|id| (id, i)))
        .collect();
    let mut last = None;
    for item in patch.iter().filter(|item| item.get(PATCH).is_none()) {
        let found = ident(item, key).and_then(|id| positions.get(&id).copied());
        match (found, last) {
            (None, _) => return Err(SmpError::OrderMismatch { path: shown(path) }),
            (Some(at), Some(before)) if at < before => {
                return Err(SmpError::OrderMismatch { path: shown(path) })
            }
            (Some(at), _) => last = Some(at),
        }
    }
    Ok(())
}

/// apimachinery's `normalizeElementOrder`: the elements named in `wanted` in its
/// order, the others in the `server` (original) order, interleaved so both keep their
/// relative order: a server-only element goes before a wanted one when the original
/// had it first.
fn normalize_order(
    merged: Vec<Value>,
    wanted: &[Value],
    server: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let positions = |list: &[Value]| -> HashMap<String, usize> {
        let mut map = HashMap::new();
        for (i, v) in list.iter().enumerate() {
            if let Some(id) = ident(v, key) {
                map.entry(id).or_insert(i);
            }
        }
        map
    };
    let wanted_at = positions(wanted);
    let server_at = positions(server);
    // (position in `wanted` or in `server`, element); unknown positions sort last.
    let mut patched: Vec<(usize, Value)> = Vec::new();
    let mut server_only: Vec<(usize, Value)> = Vec::new();
    for item in merged {
        let id = ident(&item, key);
        let server_pos = id.as_ref().and_then(|id| server_at.get(id).copied());
        match id.as_ref().and_then(|id| wanted_at.get(id).copied()) {
            Some(w) => patched.push((w, item)),
            None => server_only.push((server_pos.unwrap_or(usize::MAX), item)),
        }
    }
    patched.sort_by_key(|(w, _)| *w);
    server_only.sort_by_key(|(s, _)| *s);
    let server_pos_of = |item: &Value| ident(item, key).and_then(|id| server_at.get(&id).copied());
    let mut out = Vec::with_capacity(patched.len() + server_only.len());
    let mut left = server_only.into_iter().map(|(_, v)| v).peekable();
    let mut right = patched.into_iter().map(|(_, v)| v).peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => match (server_pos_of(l), server_pos_of(r)) {
                (Some(li), Some(ri)) => li < ri,
                _ => false,
            },
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    out
}

/// The bound on nesting every recursive step checks first.
fn check_depth(path: &str, depth: usize) -> Result<(), SmpError> {
    if depth > MAX_DEPTH {
        return Err(SmpError::TooDeep {
            path: shown(path),
            max: MAX_DEPTH,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "strategic_merge_tests.rs"]
mod tests;
