//! Which objects a list or watch selects, and how a stored change turns into the watch event a
//! selecting client sees (an object leaving the selection is DELETED for it, as in the
//! apiserver's watch cache).

use std::sync::Arc;

use serde_json::{json, Value};

use super::meta::{meta_str, metadata_mut};
use super::selector::{FieldSelector, LabelSelector, SelectorError};
use super::store::{EventType, HistoryEntry};

/// Namespace, name and selectors of a list or watch request.
#[derive(Debug, Clone, Default)]
pub struct ObjectFilter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl ObjectFilter {
    /// Builds a filter from the request's scope and selector strings.
    pub fn new(
        namespace: Option<&str>,
        name: Option<&str>,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Self, SelectorError> {
        Ok(Self {
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            labels: LabelSelector::parse(label_selector)?,
            fields: FieldSelector::parse(field_selector)?,
        })
    }

    /// Whether `obj` is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        let in_ns = self
            .namespace
            .as_deref()
            .is_none_or(|ns| meta_str(obj, "namespace") == Some(ns));
        let named = self
            .name
            .as_deref()
            .is_none_or(|n| meta_str(obj, "name") == Some(n));
        let labels = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        in_ns && named && self.labels.matches(labels) && self.fields.matches(obj)
    }

    /// The event a watcher with this filter receives for `entry`, if any.
    pub fn translate(
        &self,
        entry: &HistoryEntry,
        bookmarks: bool,
    ) -> Option<(EventType, Arc<Value>)> {
        let now = self.matches(&entry.object);
        let before = entry.previous.as_deref().is_some_and(|p| self.matches(p));
        match entry.kind {
            EventType::Bookmark => bookmarks.then(|| (EventType::Bookmark, entry.object.clone())),
            EventType::Added => now.then(|| (EventType::Added, entry.object.clone())),
            EventType::Deleted => {
                let last = entry.previous.as_deref().unwrap_or(&entry.object);
                self.matches(last)
                    .then(|| (EventType::Deleted, entry.object.clone()))
            }
            EventType::Modified => match (before, now) {
                (true, true) => Some((EventType::Modified, entry.object.clone())),
                (false, true) => Some((EventType::Added, entry.object.clone())),
                (true, false) => {
                    let mut left = entry.previous.as_deref().cloned().unwrap_or(Value::Null);
                    metadata_mut(&mut left).insert(
                        "resourceVersion".into(),
                        Value::String(entry.rv.to_string()),
                    );
                    Some((EventType::Deleted, Arc::new(left)))
                }
                (false, false) => None,
            },
        }
    }
}

/// One watch event line: `{"type":"ADDED","object":{...}}` and a newline.
pub fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object }))
        .unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// A list item as the apiserver returns it: without `kind` and `apiVersion`.
pub fn list_item(obj: &Value) -> Value {
    let mut item = obj.clone();
    if let Value::Object(map) = &mut item {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EventType, object: Value, previous: Option<Value>) -> HistoryEntry {
        HistoryEntry {
            seq: 1,
            rv: 9,
            storage: "/pods".into(),
            kind,
            object: Arc::new(object),
            previous: previous.map(Arc::new),
        }
    }

    fn pod(app: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": app},
            "resourceVersion": "9"}})
    }

    fn filter(labels: &str) -> ObjectFilter {
        ObjectFilter::new(Some("ns"), None, labels, "").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn leaving_the_selection_is_a_delete_of_the_old_state() {
        let e = entry(EventType::Modified, pod("db"), Some(pod("web")));
        let (kind, obj) = filter("app=web")
            .translate(&e, false)
            .unwrap_or_else(|| panic!("no event"));
        assert_eq!(kind, EventType::Deleted);
        assert_eq!(obj["metadata"]["labels"]["app"], "web");
        assert_eq!(obj["metadata"]["resourceVersion"], "9");
    }

    #[test]
    fn entering_the_selection_is_an_add() {
        let e = entry(EventType::Modified, pod("web"), Some(pod("db")));
        let got = filter("app=web").translate(&e, false).map(|(k, _)| k);
        assert_eq!(got, Some(EventType::Added));
        assert_eq!(
            filter("app=other").translate(&e, false).map(|(k, _)| k),
            None
        );
    }

    #[test]
    fn bookmarks_only_when_asked_and_other_namespaces_filtered() {
        let b = entry(EventType::Bookmark, json!({"metadata": {}}), None);
        assert!(filter("").translate(&b, false).is_none());
        assert!(filter("").translate(&b, true).is_some());
        let mut other = pod("web");
        other["metadata"]["namespace"] = json!("elsewhere");
        assert!(!filter("").matches(&other));
    }

    #[test]
    fn list_items_lose_kind_and_api_version() {
        let item = list_item(&json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}}));
        assert_eq!(item, json!({"metadata": {}}));
    }
}
