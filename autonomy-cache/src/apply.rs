//! Applying write operations inside one redb write transaction, with byte accounting
//! and the quota check done before anything is changed.

use redb::{ReadableTable, Table, WriteTransaction};

use super::error::CacheError;
use super::keys::{self, Collection, DIRECT_OWNER};
use super::object::{self, ListMeta, ParsedList, StoredObject, WatchEvent};
use super::store::{
    decode_value, encode_value, BYTES_USED, COMPONENTS, COUNTERS, DOCS, ENTRIES, LISTS, OBJECTS,
};

/// One change the writer applies; built (and JSON-validated) by the caller.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// A non-resource document (`/version`, discovery).
    Doc {
        component: String,
        path: String,
        body: bytes::Bytes,
    },
    /// Store one object in a set unless it is older than the stored copy.
    Upsert {
        collection: Collection,
        owner: String,
        object: StoredObject,
    },
    /// Replace a list set atomically (a page of a paginated list is only merged in).
    ReplaceList {
        collection: Collection,
        owner: String,
        list: ParsedList,
    },
    /// An offline-acknowledged write (lease, node or pod status): replaces the object
    /// in the direct set and in every list set holding it, so offline get and list
    /// both answer it. Its resourceVersion is the cached one (no apiserver to bump it).
    Acknowledged {
        collection: Collection,
        object: StoredObject,
    },
    /// A watch event for a list set.
    Event {
        collection: Collection,
        owner: String,
        event: WatchEvent,
    },
}

impl WriteOp {
    /// The component the operation belongs to (its last-seen time is refreshed).
    pub(crate) fn component(&self) -> &str {
        match self {
            WriteOp::Doc { component, .. } => component,
            WriteOp::Upsert { collection, .. }
            | WriteOp::Acknowledged { collection, .. }
            | WriteOp::ReplaceList { collection, .. }
            | WriteOp::Event { collection, .. } => &collection.component,
        }
    }
}

fn storage(err: impl Into<redb::Error>) -> CacheError {
    CacheError::from_storage(err)
}

type BytesTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// The open tables of one write transaction and the running counters.
pub(crate) struct Tables<'t> {
    objects: BytesTable<'t>,
    lists: BytesTable<'t>,
    docs: BytesTable<'t>,
    components: Table<'t, &'static str, u64>,
    counters: Table<'t, &'static str, u64>,
    pub bytes_used: u64,
    pub entries: u64,
    max_bytes: u64,
}

/// Which accounted table a key lives in.
#[derive(Clone, Copy)]
enum Which {
    Objects,
    Lists,
    Docs,
}

impl<'t> Tables<'t> {
    /// Opens every table in `txn` and reads the counters.
    pub(crate) fn open(txn: &'t WriteTransaction, max_bytes: u64) -> Result<Self, CacheError> {
        let counters = txn.open_table(COUNTERS).map_err(storage)?;
        let read = |name| -> Result<u64, CacheError> {
            Ok(counters
                .get(name)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let (bytes_used, entries) = (read(BYTES_USED)?, read(ENTRIES)?);
        Ok(Tables {
            objects: txn.open_table(OBJECTS).map_err(storage)?,
            lists: txn.open_table(LISTS).map_err(storage)?,
            docs: txn.open_table(DOCS).map_err(storage)?,
            components: txn.open_table(COMPONENTS).map_err(storage)?,
            counters,
            bytes_used,
            entries,
            max_bytes,
        })
    }

    /// Writes the counters back; call once before commit.
    pub(crate) fn save_counters(&mut self) -> Result<(), CacheError> {
        self.counters
            .insert(BYTES_USED, self.bytes_used)
            .map_err(storage)?;
        self.counters
            .insert(ENTRIES, self.entries)
            .map_err(storage)?;
        Ok(())
    }

    fn table(&mut self, which: Which) -> &mut BytesTable<'t> {
        match which {
            Which::Objects => &mut self.objects,
            Which::Lists => &mut self.lists,
            Which::Docs => &mut self.docs,
        }
    }

    /// Refuses growth beyond the quota (shrinking is always allowed).
    fn check_growth(&self, old: u64, new: u64) -> Result<(), CacheError> {
        let used_after = self.bytes_used.saturating_sub(old).saturating_add(new);
        if new > old && used_after > self.max_bytes {
            return Err(CacheError::QuotaExceeded {
                used: self.bytes_used,
                max: self.max_bytes,
                needed: new - old,
            });
        }
        Ok(())
    }

    fn stored_len(&mut self, which: Which, key: &[u8]) -> Result<Option<u64>, CacheError> {
        let found = self.table(which).get(key).map_err(storage)?;
        Ok(found.map(|v| (key.len() + v.value().len()) as u64))
    }

    /// Inserts after the quota check; keeps the counters exact.
    fn put(&mut self, which: Which, key: &[u8], value: &[u8]) -> Result<(), CacheError> {
        let old = self.stored_len(which, key)?;
        let new = (key.len() + value.len()) as u64;
        self.check_growth(old.unwrap_or(0), new)?;
        self.table(which).insert(key, value).map_err(storage)?;
        self.account(old, Some(new));
        Ok(())
    }

    fn remove(&mut self, which: Which, key: &[u8]) -> Result<(), CacheError> {
        let old = self.stored_len(which, key)?;
        if old.is_some() {
            self.table(which).remove(key).map_err(storage)?;
            self.account(old, None);
        }
        Ok(())
    }

    fn account(&mut self, old: Option<u64>, new: Option<u64>) {
        self.bytes_used = self
            .bytes_used
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(new.unwrap_or(0));
        self.entries = match (old, new) {
            (None, Some(_)) => self.entries.saturating_add(1),
            (Some(_), None) => self.entries.saturating_sub(1),
            _ => self.entries,
        };
    }

    /// Keys and accounted sizes in a prefix range.
    fn range_sizes(
        &mut self,
        which: Which,
        parts: &[&str],
    ) -> Result<Vec<(Vec<u8>, u64)>, CacheError> {
        let (start, end) = keys::prefix_range(parts);
        let mut found = Vec::new();
        for entry in self
            .table(which)
            .range(start.as_slice()..end.as_slice())
            .map_err(storage)?
        {
            let (key, value) = entry.map_err(storage)?;
            found.push((
                key.value().to_vec(),
                (key.value().len() + value.value().len()) as u64,
            ));
        }
        Ok(found)
    }

    /// Deletes every key starting with `parts`.
    fn remove_prefix(&mut self, which: Which, parts: &[&str]) -> Result<(), CacheError> {
        for (key, size) in self.range_sizes(which, parts)? {
            self.table(which).remove(key.as_slice()).map_err(storage)?;
            self.account(Some(size), None);
        }
        Ok(())
    }

    /// Records that `component` was active at `now` (unix seconds).
    pub(crate) fn touch(&mut self, component: &str, now: u64) -> Result<(), CacheError> {
        self.components.insert(component, now).map_err(storage)?;
        Ok(())
    }

    /// Applies one operation; a quota refusal leaves the transaction untouched.
    pub(crate) fn apply(&mut self, op: &WriteOp) -> Result<(), CacheError> {
        match op {
            WriteOp::Doc {
                component,
                path,
                body,
            } => self.put(Which::Docs, &keys::key(&[component, path]), body),
            WriteOp::Upsert {
                collection,
                owner,
                object,
            } => self.upsert(collection, owner, object),
            WriteOp::Acknowledged { collection, object } => self.acknowledged(collection, object),
            WriteOp::ReplaceList {
                collection,
                owner,
                list,
            } => self.replace_list(collection, owner, list),
            WriteOp::Event {
                collection,
                owner,
                event,
            } => self.event(collection, owner, event),
        }
    }

    fn upsert(
        &mut self,
        c: &Collection,
        owner: &str,
        obj: &StoredObject,
    ) -> Result<(), CacheError> {
        let key = keys::object_key(c, owner, &obj.namespace, &obj.name);
        let stored_rv = self
            .objects
            .get(key.as_slice())
            .map_err(storage)?
            .and_then(|v| decode_value(v.value()).0.map(str::to_string));
        if object::is_older(obj.resource_version.as_deref(), stored_rv.as_deref()) {
            return Ok(());
        }
        let value = encode_value(obj.resource_version.as_deref(), &obj.json);
        self.put(Which::Objects, &key, &value)
    }

    fn acknowledged(&mut self, c: &Collection, obj: &StoredObject) -> Result<(), CacheError> {
        let value = encode_value(obj.resource_version.as_deref(), &obj.json);
        let mut targets = vec![keys::object_key(c, DIRECT_OWNER, &obj.namespace, &obj.name)];
        for (list_key, _) in self.range_sizes(Which::Lists, &[&c.component, &c.gvr])? {
            let owner = String::from_utf8_lossy(keys::last_part(&list_key)).into_owned();
            let key = keys::object_key(c, &owner, &obj.namespace, &obj.name);
            if self.objects.get(key.as_slice()).map_err(storage)?.is_some() {
                targets.push(key);
            }
        }
        let (mut old, mut new) = (0, 0);
        for key in &targets {
            old += self.stored_len(Which::Objects, key)?.unwrap_or(0);
            new += (key.len() + value.len()) as u64;
        }
        // All copies or none: the whole change fits, so no single put can overflow.
        self.check_growth(old, new)?;
        for key in &targets {
            self.put(Which::Objects, key, &value)?;
        }
        Ok(())
    }

    fn replace_list(
        &mut self,
        c: &Collection,
        owner: &str,
        list: &ParsedList,
    ) -> Result<(), CacheError> {
        if list.partial {
            return self.merge_page(c, owner, list);
        }
        let old = self.range_sizes(Which::Objects, &[&c.component, &c.gvr, owner])?;
        let list_key = keys::list_key(c, owner);
        let meta =
            serde_json::to_vec(&list.meta).map_err(|e| CacheError::Storage(e.to_string()))?;
        let mut new_entries = Vec::with_capacity(list.items.len());
        for item in &list.items {
            let key = keys::object_key(c, owner, &item.namespace, &item.name);
            let value = encode_value(item.resource_version.as_deref(), &item.json);
            new_entries.push((key, value));
        }
        let old_total: u64 = old.iter().map(|(_, size)| size).sum::<u64>()
            + self.stored_len(Which::Lists, &list_key)?.unwrap_or(0);
        let new_total: u64 = new_entries
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>()
            + (list_key.len() + meta.len()) as u64;
        self.check_growth(old_total, new_total)?;
        for (key, size) in old {
            self.objects.remove(key.as_slice()).map_err(storage)?;
            self.account(Some(size), None);
        }
        // The whole replacement fits (checked above), so no single put can overflow.
        for (key, value) in &new_entries {
            self.put(Which::Objects, key, value)?;
        }
        self.put(Which::Lists, &list_key, &meta)
    }

    /// A page of a paginated list is not the whole set: its objects are added (the
    /// next full list or watch removes what upstream deleted); the list record is
    /// created if missing, without a resourceVersion.
    fn merge_page(
        &mut self,
        c: &Collection,
        owner: &str,
        list: &ParsedList,
    ) -> Result<(), CacheError> {
        for item in &list.items {
            self.upsert(c, owner, item)?;
        }
        let list_key = keys::list_key(c, owner);
        if self.stored_len(Which::Lists, &list_key)?.is_none() {
            let meta = ListMeta {
                resource_version: None,
                ..list.meta.clone()
            };
            let meta = serde_json::to_vec(&meta).map_err(|e| CacheError::Storage(e.to_string()))?;
            self.put(Which::Lists, &list_key, &meta)?;
        }
        Ok(())
    }

    fn event(&mut self, c: &Collection, owner: &str, event: &WatchEvent) -> Result<(), CacheError> {
        let rv = match event {
            WatchEvent::Upsert(obj) => {
                self.upsert(c, owner, obj)?;
                obj.resource_version.clone()
            }
            WatchEvent::Deleted(obj) => {
                let key = keys::object_key(c, owner, &obj.namespace, &obj.name);
                self.remove(Which::Objects, &key)?;
                obj.resource_version.clone()
            }
            WatchEvent::Bookmark(rv) => rv.clone(),
            WatchEvent::Ignored => return Ok(()),
        };
        self.advance_list(c, owner, rv, event)
    }

    /// Moves a list record's resourceVersion forward (creating the record for a watch
    /// that was never listed, with the kind its objects carry).
    fn advance_list(
        &mut self,
        c: &Collection,
        owner: &str,
        rv: Option<String>,
        event: &WatchEvent,
    ) -> Result<(), CacheError> {
        let key = keys::list_key(c, owner);
        let stored = self.lists.get(key.as_slice()).map_err(storage)?;
        let mut meta = stored
            .and_then(|v| serde_json::from_slice::<ListMeta>(v.value()).ok())
            .unwrap_or_default();
        if meta.kind.is_empty() {
            if let WatchEvent::Upsert(obj) = event {
                (meta.kind, meta.api_version) = object::kind_of(&obj.json);
            }
        }
        let advanced = object::newest(meta.resource_version.clone(), rv);
        if advanced == meta.resource_version && !meta.kind.is_empty() {
            return Ok(());
        }
        meta.resource_version = advanced;
        let value = serde_json::to_vec(&meta).map_err(|e| CacheError::Storage(e.to_string()))?;
        self.put(Which::Lists, &key, &value)
    }

    /// Deletes all entries of components last active before `cutoff`.
    pub(crate) fn collect_garbage(&mut self, cutoff: u64) -> Result<Vec<String>, CacheError> {
        let mut stale = Vec::new();
        for entry in self.components.iter().map_err(storage)? {
            let (name, seen) = entry.map_err(storage)?;
            if seen.value() < cutoff {
                stale.push(name.value().to_string());
            }
        }
        for component in &stale {
            for which in [Which::Objects, Which::Lists, Which::Docs] {
                self.remove_prefix(which, &[component])?;
            }
            self.components
                .remove(component.as_str())
                .map_err(storage)?;
        }
        Ok(stale)
    }
}
