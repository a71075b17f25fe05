//! The fake apiserver's storage: objects, one global resourceVersion counter and a bounded
//! event history that watches replay from. Plain data, no I/O: the server wraps it in a lock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use super::meta::{meta_str, metadata_mut, now_rfc3339, resource_version, set_top, uid};
use super::resource::Res;
use super::status::ApiError;

mod history;
mod writes;

/// Events kept for watch replay; older resourceVersions get 410 Gone.
pub const DEFAULT_HISTORY: usize = 10_000;

/// Where an object lives: its type's storage key, namespace ("" if cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub storage: String,
    pub namespace: String,
    pub name: String,
}

/// The `type` of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
    Bookmark,
}

impl EventType {
    /// The wire spelling (`ADDED`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
            Self::Bookmark => "BOOKMARK",
        }
    }
}

/// One change in the history; `previous` is the object before a MODIFIED or DELETED.
#[derive(Clone, Debug)]
pub struct HistoryEntry {
    pub seq: u64,
    pub rv: u64,
    pub storage: String,
    pub kind: EventType,
    pub object: Arc<Value>,
    pub previous: Option<Arc<Value>>,
}

/// What a new watch starts from.
#[derive(Debug)]
pub struct WatchStart {
    /// Current objects to send as ADDED first (empty when replaying from a resourceVersion).
    pub initial: Vec<Arc<Value>>,
    /// First history sequence number to read.
    pub cursor: u64,
    /// Events at or below this resourceVersion are skipped.
    pub min_rv: u64,
}

/// Why a watcher cannot read on: history it had not read yet was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FellBehind;

/// Objects, the resourceVersion counter and the event history.
pub struct Store {
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    rv: u64,
    history: VecDeque<HistoryEntry>,
    history_cap: usize,
    next_seq: u64,
    /// Every event with a resourceVersion above this one can be replayed.
    oldest_rv: u64,
    resources: Vec<Res>,
    uid_seed: u64,
    uid_counter: u64,
}

impl Store {
    /// An empty store knowing `resources`, keeping `history_cap` events (at least 1).
    pub fn new(resources: Vec<Res>, history_cap: usize, uid_seed: u64) -> Self {
        Self {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            next_seq: 0,
            oldest_rv: 1,
            resources,
            uid_seed,
            uid_counter: 0,
        }
    }

    /// The current (newest) resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may still start from.
    pub fn oldest_rv(&self) -> u64 {
        self.oldest_rv
    }

    /// Sequence number the next history entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Known resource types, in registration order.
    pub fn resources(&self) -> &[Res] {
        &self.resources
    }

    /// Adds a type if it is not known yet.
    pub fn register(&mut self, res: &Res) {
        if !self.resources.contains(res) {
            self.resources.push(res.clone());
        }
    }

    /// Finds the type served at `group/version/resource`.
    pub fn lookup(&self, group: &str, version: &str, resource: &str) -> Option<Res> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
            .cloned()
    }

    fn key(res: &Res, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            storage: res.storage_key(),
            namespace: if res.namespaced {
                namespace.unwrap_or_default().to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    /// The stored object, if any.
    pub fn get(&self, res: &Res, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        self.objects.get(&Self::key(res, namespace, name)).cloned()
    }

    /// Objects of a type in key order (namespace, then name), optionally in one namespace.
    pub fn list(&self, res: &Res, namespace: Option<&str>) -> Vec<Arc<Value>> {
        let storage = res.storage_key();
        self.objects
            .iter()
            .filter(|(k, _)| k.storage == storage)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object unconditionally (the tests' seeding path).
    ///
    /// Fills `kind`, `apiVersion`, `uid`, `creationTimestamp` and a new `resourceVersion`;
    /// cluster-scoped types lose `metadata.namespace`, namespaced ones default to `default`.
    pub fn upsert(&mut self, res: &Res, mut obj: Value) -> Result<Arc<Value>, ApiError> {
        self.register(res);
        let name = meta_str(&obj, "name")
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::BadRequest("metadata.name: Required value".into()))?
            .to_owned();
        let namespace = if res.namespaced {
            let ns = meta_str(&obj, "namespace").unwrap_or("default").to_owned();
            metadata_mut(&mut obj).insert("namespace".into(), Value::String(ns.clone()));
            Some(ns)
        } else {
            metadata_mut(&mut obj).remove("namespace");
            None
        };
        if let Some(ns) = &namespace {
            self.ensure_namespace(ns);
        }
        let previous = self.get(res, namespace.as_deref(), &name);
        Ok(self.commit(res, namespace.as_deref(), &name, obj, previous))
    }

    /// Creates the Namespace object a namespaced object lives in, if it is missing, so that
    /// clients that look the namespace up (kubectl does on 404) find it.
    fn ensure_namespace(&mut self, namespace: &str) {
        let ns_res = Res::namespaces();
        if !self.resources.contains(&ns_res) || self.get(&ns_res, None, namespace).is_some() {
            return;
        }
        let obj = serde_json::json!({
            "metadata": { "name": namespace },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Active" },
        });
        self.commit(&ns_res, None, namespace, obj, None);
    }

    /// Stores `obj` under a new resourceVersion and records ADDED or MODIFIED.
    fn commit(
        &mut self,
        res: &Res,
        namespace: Option<&str>,
        name: &str,
        mut obj: Value,
        previous: Option<Arc<Value>>,
    ) -> Arc<Value> {
        set_top(&mut obj, "kind", &res.kind);
        set_top(&mut obj, "apiVersion", &res.api_version());
        let (uid_value, created_at) = match &previous {
            Some(prev) => (
                meta_str(prev, "uid").map(str::to_owned),
                meta_str(prev, "creationTimestamp").map(str::to_owned),
            ),
            None => (None, None),
        };
        self.rv += 1;
        let rv = self.rv;
        self.uid_counter += 1;
        let fresh_uid = uid(self.uid_seed, self.uid_counter);
        let meta = metadata_mut(&mut obj);
        meta.insert("name".into(), Value::String(name.to_owned()));
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        if let Some(u) = uid_value {
            meta.insert("uid".into(), Value::String(u));
        }
        meta.entry("uid").or_insert(Value::String(fresh_uid));
        if let Some(t) = created_at {
            meta.insert("creationTimestamp".into(), Value::String(t));
        }
        meta.entry("creationTimestamp")
            .or_insert_with(|| Value::String(now_rfc3339()));
        let obj = Arc::new(obj);
        self.objects
            .insert(Self::key(res, namespace, name), obj.clone());
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(res, kind, obj.clone(), previous);
        obj
    }

    fn record(
        &mut self,
        res: &Res,
        kind: EventType,
        object: Arc<Value>,
        previous: Option<Arc<Value>>,
    ) {
        self.history.push_back(HistoryEntry {
            seq: self.next_seq,
            rv: self.rv,
            storage: res.storage_key(),
            kind,
            object,
            previous,
        });
        self.next_seq += 1;
        while self.history.len() > self.history_cap {
            if let Some(evicted) = self.history.pop_front() {
                self.oldest_rv = self.oldest_rv.max(evicted.rv);
            }
        }
    }

    /// Deletes an object; returns it with the deletion's resourceVersion (DELETED's object).
    pub fn delete(&mut self, res: &Res, namespace: Option<&str>, name: &str) -> Option<Arc<Value>> {
        let previous = self.objects.remove(&Self::key(res, namespace, name))?;
        self.rv += 1;
        let mut gone = (*previous).clone();
        metadata_mut(&mut gone)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let gone = Arc::new(gone);
        self.record(res, EventType::Deleted, gone.clone(), Some(previous));
        Some(gone)
    }

    /// Records a BOOKMARK at the current resourceVersion for watchers of `res`.
    pub fn bookmark(&mut self, res: &Res) {
        let object = serde_json::json!({
            "kind": res.kind,
            "apiVersion": res.api_version(),
            "metadata": { "resourceVersion": self.rv.to_string(), "creationTimestamp": null },
        });
        self.record(res, EventType::Bookmark, Arc::new(object), None);
    }

    /// Forgets history up to `rv` (capped at the current one): older watches get 410.
    pub fn compact(&mut self, rv: u64) {
        self.oldest_rv = self.oldest_rv.max(rv.min(self.rv));
    }
}

/// Parses a `resourceVersion` parameter: `None` for unset or "0" (current state).
pub fn parse_rv(text: Option<&str>) -> Result<Option<u64>, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None | Some("0") => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {t:?}"))),
    }
}

/// The resourceVersion an object carries, 0 if it has none.
pub fn object_rv(obj: &Value) -> u64 {
    resource_version(obj).unwrap_or(0)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn store() -> Store {
        Store::new(Res::defaults(), 4, 42)
    }

    pub(super) fn pod(name: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn upsert_fills_metadata_and_bumps_the_global_counter() {
        let mut s = store();
        let a = s
            .upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        let b = s.upsert(&Res::configmaps(), json!({"metadata": {"name": "b"}}));
        let b = b.unwrap_or_else(|e| panic!("{e}"));
        assert!(object_rv(&a) < object_rv(&b));
        assert!(
            s.get(&Res::namespaces(), None, "default").is_some(),
            "namespace created"
        );
        assert_eq!(a["kind"], "Pod");
        assert_eq!(b["metadata"]["namespace"], "default");
        assert!(meta_str(&a, "uid").is_some() && meta_str(&a, "creationTimestamp").is_some());
        let a2 = s
            .upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            meta_str(&a, "uid"),
            meta_str(&a2, "uid"),
            "uid survives updates"
        );
    }

    #[test]
    fn delete_records_the_final_state_with_a_new_rv() {
        let mut s = store();
        let a = s
            .upsert(&Res::pods(), pod("a"))
            .unwrap_or_else(|e| panic!("{e}"));
        let gone = s
            .delete(&Res::pods(), Some("ns"), "a")
            .map(|o| object_rv(&o));
        assert_eq!(gone, Some(object_rv(&a) + 1));
        assert!(s.get(&Res::pods(), Some("ns"), "a").is_none());
        assert!(s.delete(&Res::pods(), Some("ns"), "a").is_none());
    }
}
