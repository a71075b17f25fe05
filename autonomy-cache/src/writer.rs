//! The single writer thread: group commit. Writes queue up; each batch (until
//! `commit_interval` after its first write, or `MAX_BATCH` writes) is one transaction
//! and one durable commit, after which every waiting `record_*` future resolves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::Durability;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::apply::{Tables, WriteOp};
use super::error::CacheError;
use super::store::Store;

/// Most writes sharing one transaction.
const MAX_BATCH: usize = 1024;
/// Pending writes before `record_*` callers wait for room (bounded memory).
pub(crate) const QUEUE_DEPTH: usize = 4096;

/// A queued write and who waits for its outcome.
pub(crate) struct Job {
    pub op: WriteOp,
    pub done: Option<oneshot::Sender<Result<(), CacheError>>>,
}

/// What the writer needs besides the queue.
pub(crate) struct WriterConfig {
    pub max_bytes: u64,
    pub gc_after: Duration,
    pub commit_interval: Duration,
}

/// Seconds since the epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How often GC runs after the one at open.
fn gc_period(gc_after: Duration) -> Duration {
    (gc_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// Runs the writer until every sender is dropped, then returns (closing nothing: the
/// caller drops the store).
pub(crate) fn run(store: Arc<Store>, cfg: WriterConfig, mut queue: mpsc::Receiver<Job>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cache writer cannot start its runtime; cache writes will fail");
            return;
        }
    };
    let warned_full = AtomicBool::new(false);
    runtime.block_on(async {
        let mut next_gc = Instant::now() + gc_period(cfg.gc_after);
        loop {
            let first = tokio::select! {
                job = queue.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                _ = tokio::time::sleep_until(next_gc) => {
                    contained(&store, "GC", || maintain(&store, &cfg, true));
                    next_gc = Instant::now() + gc_period(cfg.gc_after);
                    continue;
                }
            };
            let deadline = Instant::now() + cfg.commit_interval;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
            // A panic drops the batch: its waiters see `Closed`, their requests
            // were answered anyway.
            contained(&store, "commit", || {
                commit_batch(&store, &cfg, batch, &warned_full)
            });
        }
    });
    // Remember who asked offline, so the next open's GC keeps them.
    contained(&store, "final GC", || maintain(&store, &cfg, false));
}

/// Runs one writer step; if redb panics, the database is treated as damaged:
/// moved aside and replaced by a fresh one, and the writer goes on.
pub(crate) fn contained(store: &Store, what: &str, step: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        let message = super::recover::panic_message(payload.as_ref());
        tracing::error!(step = what, panic = %message, "autonomy cache writer panicked");
        store.reset(
            super::recover::ResetReason::Panic,
            format!("redb panicked during {what}: {message}"),
        );
    }
}

/// One transaction for the whole batch; answers every job.
fn commit_batch(store: &Store, cfg: &WriterConfig, batch: Vec<Job>, warned_full: &AtomicBool) {
    #[cfg(test)]
    if store.panic_next_commit.swap(false, Ordering::Relaxed) {
        panic!("injected panic in the cache writer");
    }
    if let Err(err) = store.ensure_writable() {
        let results = vec![Err(err); batch.len()];
        return deliver(store, cfg, batch, results, warned_full);
    }
    let ops: Vec<&WriteOp> = batch.iter().map(|job| &job.op).collect();
    let results = match write_transaction(store, cfg, &ops) {
        Ok(results) => results,
        Err(err) => {
            tracing::warn!(error = %err, writes = ops.len(), "cache commit failed; nothing of the batch was stored");
            store.mark_failed(&err);
            vec![Err(err); ops.len()]
        }
    };
    deliver(store, cfg, batch, results, warned_full);
}

/// Resolves every job's future; counts refusals and logs one line when the cache
/// fills up (and one when it has room again), not one per write.
fn deliver(
    store: &Store,
    cfg: &WriterConfig,
    batch: Vec<Job>,
    results: Vec<Result<(), CacheError>>,
    warned_full: &AtomicBool,
) {
    let full = |r: &Result<(), CacheError>| {
        matches!(
            r,
            Err(CacheError::QuotaExceeded { .. } | CacheError::DiskFull)
        )
    };
    // Counted before anyone is answered: a caller that saw its refusal sees it counted.
    let refused = results.iter().filter(|r| full(r)).count() as u64;
    store.refused_writes.fetch_add(refused, Ordering::Relaxed);
    for (job, result) in batch.into_iter().zip(results) {
        if let Err(err) = &result {
            if full(&result) && !warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(component = job.op.component(), error = %err,
                    "autonomy cache full: refusing new entries, still serving stored ones");
            }
        }
        if let Some(done) = job.done {
            let _ = done.send(result);
        }
    }
    let used = store.bytes_used.load(Ordering::Relaxed);
    if refused == 0 && used < cfg.max_bytes / 10 * 9 && warned_full.swap(false, Ordering::Relaxed) {
        tracing::info!(bytes_used = used, "autonomy cache has room again");
    }
}

/// Applies `ops` in one durable transaction; per-op results (quota refusals are per
/// op), or one error for the whole batch when storage failed (nothing committed).
fn write_transaction(
    store: &Store,
    cfg: &WriterConfig,
    ops: &[&WriteOp],
) -> Result<Vec<Result<(), CacheError>>, CacheError> {
    store.with_db(|db| {
        let mut txn = db.begin_write().map_err(CacheError::from_storage)?;
        txn.set_durability(Durability::Immediate);
        txn.set_quick_repair(true);
        let now = unix_now();
        let (results, bytes, entries) = {
            let mut tables = Tables::open(&txn, cfg.max_bytes)?;
            let mut results = Vec::with_capacity(ops.len());
            let mut touched = std::collections::HashSet::new();
            for op in ops {
                if touched.insert(op.component()) {
                    tables.touch(op.component(), now)?;
                }
                match tables.apply(op) {
                    Err(CacheError::QuotaExceeded { used, max, needed }) => {
                        results.push(Err(CacheError::QuotaExceeded { used, max, needed }))
                    }
                    Err(err) => return Err(err),
                    Ok(()) => results.push(Ok(())),
                }
            }
            let asked = std::mem::take(&mut *store.asked.lock().unwrap_or_else(|p| p.into_inner()));
            for (component, at) in asked {
                tables.touch(&component, at)?;
            }
            tables.save_counters()?;
            (results, tables.bytes_used, tables.entries)
        };
        txn.commit().map_err(CacheError::from_storage)?;
        store.commits.fetch_add(1, Ordering::Relaxed);
        store.bytes_used.store(bytes, Ordering::Relaxed);
        store.entries.store(entries, Ordering::Relaxed);
        Ok(results)
    })
}

/// Persists when components were last asked for and, with `collect`, deletes the
/// entries of components idle for `gc_after`.
pub(crate) fn maintain(store: &Store, cfg: &WriterConfig, collect: bool) {
    let cutoff = unix_now().saturating_sub(cfg.gc_after.as_secs());
    let result = store.with_db(|db| {
        let mut txn = db.begin_write().map_err(CacheError::from_storage)?;
        txn.set_quick_repair(true);
        let asked = std::mem::take(&mut *store.asked.lock().unwrap_or_else(|p| p.into_inner()));
        let (removed, bytes, entries) = {
            let mut tables = Tables::open(&txn, cfg.max_bytes)?;
            for (component, at) in &asked {
                tables.touch(component, *at)?;
            }
            let removed = match collect {
                true => tables.collect_garbage(cutoff)?,
                false => Vec::new(),
            };
            tables.save_counters()?;
            (removed, tables.bytes_used, tables.entries)
        };
        txn.commit().map_err(CacheError::from_storage)?;
        store.bytes_used.store(bytes, Ordering::Relaxed);
        store.entries.store(entries, Ordering::Relaxed);
        Ok(removed)
    });
    if let Err(err) = &result {
        store.mark_failed(err);
    }
    match result {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(components = ?removed, "autonomy cache dropped idle components")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "autonomy cache GC failed"),
    }
}
