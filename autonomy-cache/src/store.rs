//! The redb database: its tables, opening (and reopening after an I/O error), and the
//! read side used by offline answers. Writes happen only in the writer thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, TableDefinition};

use super::error::CacheError;
use super::keys::{self, Collection, DIRECT_OWNER};
use super::object::{self, ListMeta};
use super::permissions;
use super::recover::{self, CacheReset, OpenFailure, ResetReason};

/// Objects: component, gvr, owner, namespace, name → resourceVersion NUL json.
pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// List records: component, gvr, owner → [`ListMeta`] JSON.
pub(crate) const LISTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("lists");
/// Non-resource documents: component, path → body.
pub(crate) const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
/// Component → unix seconds when it was last recorded or asked for.
pub(crate) const COMPONENTS: TableDefinition<&str, u64> = TableDefinition::new("components");
/// Accounted bytes and entries, updated in the same transactions as the data.
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
pub(crate) const BYTES_USED: &str = "bytes_used";
pub(crate) const ENTRIES: &str = "entries";

/// File name of the database inside the cache directory.
const DB_FILE: &str = "cache.redb";
/// redb's page cache; the default (1 GiB) is too much for an edge node.
const PAGE_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Free space that must be writable before a database poisoned by ENOSPC is reopened.
const REOPEN_PROBE_BYTES: usize = 256 * 1024;
/// How long writes are refused after a storage error before the next try.
const REOPEN_BACKOFF: Duration = Duration::from_secs(1);

/// The database plus the counters the writer keeps current.
pub(crate) struct Store {
    path: PathBuf,
    /// `None` after an I/O error until the writer reopens it.
    db: RwLock<Option<Database>>,
    pub bytes_used: AtomicU64,
    pub entries: AtomicU64,
    pub refused_writes: AtomicU64,
    pub commits: AtomicU64,
    /// Components asked for (offline) since the writer last persisted their time.
    pub asked: Mutex<HashMap<String, u64>>,
    /// After a storage error: refuse writes with this error until then.
    refuse_writes: Mutex<Option<(Instant, CacheError)>>,
    /// Resets since start, indexed like [`ResetReason::ALL`].
    resets: [AtomicU64; 4],
    last_reset: Mutex<Option<CacheReset>>,
    /// Tests: the writer panics at its next commit.
    #[cfg(test)]
    pub panic_next_commit: std::sync::atomic::AtomicBool,
}

/// Moves the unusable file at `path` aside, with the ERROR line operators look for.
fn reset_file(path: &Path, reason: ResetReason, detail: String) -> CacheReset {
    let moved_to = recover::move_aside(path, reason, super::writer::unix_now());
    let reset = CacheReset {
        reason,
        detail,
        moved_to,
    };
    tracing::error!(reason = reason.label(), error = %reset.detail, path = %path.display(),
        "autonomy cache file unusable: {reset}; starting a fresh cache (the tunnel is not affected)");
    reset
}

/// Stored value: resourceVersion, NUL, JSON.
pub(crate) fn encode_value(rv: Option<&str>, json: &[u8]) -> Vec<u8> {
    let rv = rv.filter(|rv| !rv.contains('\0')).unwrap_or_default();
    let mut value = Vec::with_capacity(rv.len() + 1 + json.len());
    value.extend_from_slice(rv.as_bytes());
    value.push(0);
    value.extend_from_slice(json);
    value
}

/// Splits a stored value into resourceVersion (if any) and JSON.
pub(crate) fn decode_value(value: &[u8]) -> (Option<&str>, &[u8]) {
    match value.iter().position(|b| *b == 0) {
        Some(pos) => {
            let rv = std::str::from_utf8(&value[..pos])
                .ok()
                .filter(|rv| !rv.is_empty());
            (rv, &value[pos + 1..])
        }
        None => (None, value),
    }
}

fn storage(err: impl Into<redb::Error>) -> CacheError {
    CacheError::from_storage(err)
}

/// Opens or creates the database file and its tables; redb's panics are
/// contained and, like a damaged file, reported as asking for a reset.
fn open_database(path: &Path) -> Result<Database, OpenFailure> {
    let fail = |err: redb::Error| OpenFailure {
        reset: recover::classify(&err),
        message: CacheError::from_storage(err).to_string(),
    };
    recover::contain(|| {
        let db = Database::builder()
            .set_cache_size(PAGE_CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(e.into()))?;
        let mut txn = db.begin_write().map_err(|e| fail(e.into()))?;
        txn.set_quick_repair(true);
        txn.open_table(OBJECTS).map_err(|e| fail(e.into()))?;
        txn.open_table(LISTS).map_err(|e| fail(e.into()))?;
        txn.open_table(DOCS).map_err(|e| fail(e.into()))?;
        txn.open_table(COMPONENTS).map_err(|e| fail(e.into()))?;
        txn.open_table(COUNTERS).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(db)
    })
}

/// Reads the accounted bytes and entries (the first read of the b-trees: a
/// damaged file often shows here).
fn load_counters(db: &Database) -> Result<(u64, u64), OpenFailure> {
    let fail = |err: redb::Error| OpenFailure {
        reset: recover::classify(&err),
        message: CacheError::from_storage(err).to_string(),
    };
    recover::contain(|| {
        let txn = db.begin_read().map_err(|e| fail(e.into()))?;
        let counters = txn.open_table(COUNTERS).map_err(|e| fail(e.into()))?;
        let read = |name| -> Result<u64, OpenFailure> {
            Ok(counters
                .get(name)
                .map_err(|e| fail(e.into()))?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        Ok((read(BYTES_USED)?, read(ENTRIES)?))
    })
}

/// Opens `path` (created 0600 if missing) and reads its counters.
fn open_file(path: &Path) -> Result<(Database, u64, u64), OpenFailure> {
    if !path.exists() {
        permissions::create_private_file(path).map_err(|e| OpenFailure {
            reset: None,
            message: format!("cannot create {}: {e}", path.display()),
        })?;
    }
    let db = open_database(path)?;
    let (bytes, entries) = load_counters(&db)?;
    Ok((db, bytes, entries))
}

/// One object found for a get, with the resourceVersion it was stored at.
pub(crate) struct FoundObject {
    pub resource_version: Option<String>,
    pub json: Bytes,
}

impl Store {
    /// Opens the database in `dir` (created 0700 if missing, tightened if looser)
    /// and loads the counters. A file that cannot be opened is moved aside and a
    /// fresh one created: the reset is returned (and logged) so the caller can
    /// report it. Fails only when even a fresh file cannot be used.
    pub(crate) fn open(dir: &Path) -> Result<(Store, Option<CacheReset>), CacheError> {
        let open_err = |reason: String| CacheError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        permissions::secure_dir(dir).map_err(|e| open_err(e.to_string()))?;
        let path = dir.join(DB_FILE);
        let (opened, reset) = match open_file(&path) {
            Ok(opened) => (opened, None),
            Err(OpenFailure {
                reset: Some(reason),
                message,
            }) => {
                let reset = reset_file(&path, reason, message);
                let opened = open_file(&path).map_err(|f| open_err(f.message))?;
                (opened, Some(reset))
            }
            Err(failure) => return Err(open_err(failure.message)),
        };
        let (db, bytes, entries) = opened;
        let store = Store {
            path,
            db: RwLock::new(Some(db)),
            bytes_used: AtomicU64::new(bytes),
            entries: AtomicU64::new(entries),
            refused_writes: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            asked: Mutex::new(HashMap::new()),
            refuse_writes: Mutex::new(None),
            resets: Default::default(),
            last_reset: Mutex::new(None),
            #[cfg(test)]
            panic_next_commit: Default::default(),
        };
        if let Some(reset) = &reset {
            store.count_reset(reset);
        }
        Ok((store, reset))
    }

    /// Counts and remembers a reset (for metrics and `/readyz`).
    fn count_reset(&self, reset: &CacheReset) {
        self.resets[reset.reason.index()].fetch_add(1, Ordering::Relaxed);
        *self
            .last_reset
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reset.clone());
    }

    /// Resets counted since start, per [`ResetReason::ALL`].
    pub(crate) fn reset_counts(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.resets[i].load(Ordering::Relaxed))
    }

    /// The newest reset since start.
    pub(crate) fn last_reset(&self) -> Option<CacheReset> {
        self.last_reset
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open database is unusable (redb panicked using it): close it, move
    /// the file aside and start a fresh one. Stored entries are lost; requests
    /// are still proxied meanwhile.
    pub(crate) fn reset(&self, reason: ResetReason, detail: String) {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = guard.take() {
            // Dropping a damaged database may panic too; the file is replaced anyway.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
        let reset = reset_file(&self.path, reason, detail);
        self.count_reset(&reset);
        match open_file(&self.path) {
            Ok((db, bytes, entries)) => {
                *guard = Some(db);
                self.bytes_used.store(bytes, Ordering::Relaxed);
                self.entries.store(entries, Ordering::Relaxed);
            }
            Err(failure) => {
                tracing::error!(error = %failure.message, path = %self.path.display(),
                    "cannot create a fresh cache file; retrying before the next write");
            }
        }
    }

    /// Runs `f` with the open database, or fails when it is being reopened.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(CacheError::Storage(
                "database is closed after an I/O error and not yet reopened".into(),
            )),
        }
    }

    /// After a write failed with an I/O error redb refuses every further use of the
    /// database (`PreviousIo`), reads included: reopen it at once so stored entries stay
    /// readable (quick repair keeps this fast), and refuse writes for a moment.
    pub(crate) fn mark_failed(&self, err: &CacheError) {
        if !matches!(err, CacheError::DiskFull | CacheError::Storage(_)) {
            return;
        }
        *self
            .refuse_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now() + REOPEN_BACKOFF, err.clone()));
        if let Err(reopen) = self.reopen() {
            tracing::warn!(error = %reopen, path = %self.path.display(), "cache database reopen failed; retrying before the next write");
        }
    }

    /// Whether a write may be attempted now: not while a recent storage error holds,
    /// nor while the disk is still full (a small probe file cannot be written).
    pub(crate) fn ensure_writable(&self) -> Result<(), CacheError> {
        let mut refuse = self
            .refuse_writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((until, err)) = refuse.as_ref() {
            if Instant::now() < *until {
                return Err(err.clone());
            }
            if let Err(err) = self.probe_free_space() {
                *refuse = Some((Instant::now() + REOPEN_BACKOFF, err.clone()));
                return Err(err);
            }
            *refuse = None;
        }
        drop(refuse);
        let closed = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if closed {
            self.reopen().inspect_err(|err| self.mark_failed(err))?;
        }
        Ok(())
    }

    /// Drops the database and opens it again.
    fn reopen(&self) -> Result<(), CacheError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        *guard = None;
        match open_database(&self.path) {
            Ok(db) => *guard = Some(db),
            Err(OpenFailure {
                reset: Some(reason),
                message,
            }) => {
                drop(guard);
                self.reset(reason, message);
                return Ok(());
            }
            Err(failure) => return Err(CacheError::Storage(failure.message)),
        }
        tracing::info!(path = %self.path.display(), "cache database reopened after a storage error");
        Ok(())
    }

    /// Writes and syncs a scratch file so a reopen is not attempted on a full disk.
    fn probe_free_space(&self) -> Result<(), CacheError> {
        use std::io::Write;
        let probe = self.path.with_extension("space-probe");
        let result = std::fs::File::create(&probe).and_then(|mut file| {
            file.write_all(&[0u8; REOPEN_PROBE_BYTES])?;
            file.sync_all()
        });
        let _ = std::fs::remove_file(&probe);
        result.map_err(|err| match super::error::is_disk_full(&err) {
            true => CacheError::DiskFull,
            false => CacheError::Storage(format!("cannot write in the cache directory: {err}")),
        })
    }

    /// A stored non-resource document.
    pub(crate) fn doc(&self, component: &str, path: &str) -> Result<Option<Bytes>, CacheError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let docs = txn.open_table(DOCS).map_err(storage)?;
            let key = keys::key(&[component, path]);
            let found = docs.get(key.as_slice()).map_err(storage)?;
            Ok(found.map(|v| Bytes::copy_from_slice(v.value())))
        })
    }

    /// The newest stored copy of one object among all sets of its collection.
    pub(crate) fn object(
        &self,
        c: &Collection,
        namespace: &str,
        name: &str,
    ) -> Result<Option<FoundObject>, CacheError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let objects = txn.open_table(OBJECTS).map_err(storage)?;
            let lists = txn.open_table(LISTS).map_err(storage)?;
            let mut owners = vec![DIRECT_OWNER.to_string()];
            let (start, end) = keys::prefix_range(&[&c.component, &c.gvr]);
            for entry in lists
                .range(start.as_slice()..end.as_slice())
                .map_err(storage)?
            {
                let (key, _) = entry.map_err(storage)?;
                owners.push(String::from_utf8_lossy(keys::last_part(key.value())).into_owned());
            }
            let mut best: Option<FoundObject> = None;
            for owner in owners {
                let key = keys::object_key(c, &owner, namespace, name);
                let Some(value) = objects.get(key.as_slice()).map_err(storage)? else {
                    continue;
                };
                let (rv, json) = decode_value(value.value());
                let older = best.as_ref().is_some_and(|b| {
                    object::is_older(rv, b.resource_version.as_deref()) || rv.is_none()
                });
                if !older {
                    best = Some(FoundObject {
                        resource_version: rv.map(str::to_string),
                        json: Bytes::copy_from_slice(json),
                    });
                }
            }
            Ok(best)
        })
    }

    /// The list records of a collection: owner and metadata.
    pub(crate) fn lists(&self, c: &Collection) -> Result<Vec<(String, ListMeta)>, CacheError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let lists = txn.open_table(LISTS).map_err(storage)?;
            let (start, end) = keys::prefix_range(&[&c.component, &c.gvr]);
            let mut found = Vec::new();
            for entry in lists
                .range(start.as_slice()..end.as_slice())
                .map_err(storage)?
            {
                let (key, value) = entry.map_err(storage)?;
                let owner = String::from_utf8_lossy(keys::last_part(key.value())).into_owned();
                // A record that does not parse is skipped, never trusted.
                if let Ok(meta) = serde_json::from_slice::<ListMeta>(value.value()) {
                    found.push((owner, meta));
                }
            }
            Ok(found)
        })
    }

    /// The objects of one list set, as (namespace, name, resourceVersion, json).
    pub(crate) fn set_objects(
        &self,
        c: &Collection,
        owner: &str,
    ) -> Result<Vec<SetObject>, CacheError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(storage)?;
            let objects = txn.open_table(OBJECTS).map_err(storage)?;
            let (start, end) = keys::prefix_range(&[&c.component, &c.gvr, owner]);
            let mut found = Vec::new();
            for entry in objects
                .range(start.as_slice()..end.as_slice())
                .map_err(storage)?
            {
                let (key, value) = entry.map_err(storage)?;
                let ident = &key.value()[start.len()..];
                let (rv, json) = decode_value(value.value());
                found.push(SetObject {
                    ident: ident.to_vec(),
                    resource_version: rv.map(str::to_string),
                    json: Bytes::copy_from_slice(json),
                });
            }
            Ok(found)
        })
    }
}

/// One object of a list set; `ident` is `namespace NUL name`.
pub(crate) struct SetObject {
    pub ident: Vec<u8>,
    pub resource_version: Option<String>,
    pub json: Bytes,
}

impl SetObject {
    /// The namespace part of the identity.
    pub(crate) fn namespace(&self) -> &[u8] {
        self.ident.split(|b| *b == 0).next().unwrap_or_default()
    }
}
