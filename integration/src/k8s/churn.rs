//! Background churn: a fixed set of objects modified round-robin at a steady rate, every
//! write recorded so a test can check a cache or watcher saw all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::meta::metadata_mut;
use super::resource::Res;
use super::server::{lock, Shared};
use super::store::object_rv;

/// Writes kept per churner (oldest dropped past this); about 50 MB at most.
const MAX_RECORDED: usize = 500_000;
/// Shortest pause between bursts of writes.
const MIN_TICK: Duration = Duration::from_millis(2);

/// One write a churner made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnEvent {
    /// Object name (`churn-<i>`).
    pub name: String,
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// True for the initial creation of the object, false for a modification.
    pub created: bool,
}

/// A running churner; stops when dropped (or with [`ChurnHandle::stop`]).
pub struct ChurnHandle {
    events: Arc<Mutex<VecDeque<ChurnEvent>>>,
    task: JoinHandle<()>,
}

impl ChurnHandle {
    /// Every write so far, in order (creations first).
    pub fn events(&self) -> Vec<ChurnEvent> {
        lock(&self.events).iter().cloned().collect()
    }

    /// Number of modifications (not creations) so far.
    pub fn modifications(&self) -> usize {
        lock(&self.events).iter().filter(|e| !e.created).count()
    }

    /// Stops writing; returns every write made.
    pub fn stop(self) -> Vec<ChurnEvent> {
        self.task.abort();
        self.events()
    }
}

impl Drop for ChurnHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates the objects now and spawns the modifying task on `runtime`.
pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    shared: Arc<Shared>,
    res: &Res,
    namespace: &str,
    objects: usize,
    events_per_sec: u32,
) -> ChurnHandle {
    let names: Vec<String> = (0..objects.max(1)).map(|i| format!("churn-{i}")).collect();
    let events = Arc::new(Mutex::new(VecDeque::new()));
    for name in &names {
        write(&shared, res, namespace, name, 0, &events, true);
    }
    let task = runtime.spawn(run(
        shared,
        res.clone(),
        namespace.to_owned(),
        names,
        events_per_sec,
        events.clone(),
    ));
    ChurnHandle { events, task }
}

async fn run(
    shared: Arc<Shared>,
    res: Res,
    namespace: String,
    names: Vec<String>,
    events_per_sec: u32,
    events: Arc<Mutex<VecDeque<ChurnEvent>>>,
) {
    if events_per_sec == 0 {
        return;
    }
    let rate = f64::from(events_per_sec);
    let tick = Duration::from_secs_f64(1.0 / rate).max(MIN_TICK);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut done: u64 = 0;
    loop {
        interval.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        // After a stall, catch up at most one second's worth instead of a burst.
        done = done.max(due.saturating_sub(u64::from(events_per_sec)));
        while done < due {
            let name = &names[(done % names.len() as u64) as usize];
            write(&shared, &res, &namespace, name, done + 1, &events, false);
            done += 1;
        }
    }
}

fn write(
    shared: &Shared,
    res: &Res,
    namespace: &str,
    name: &str,
    generation: u64,
    events: &Mutex<VecDeque<ChurnEvent>>,
    created: bool,
) {
    let mut obj = json!({ "metadata": { "name": name, "labels": { "churn": "true" } } });
    if res.namespaced {
        metadata_mut(&mut obj).insert("namespace".into(), Value::String(namespace.into()));
    }
    metadata_mut(&mut obj).insert(
        "annotations".into(),
        json!({ "churn.example.com/generation": generation.to_string() }),
    );
    if res.resource == "configmaps" {
        obj["data"] = json!({ "generation": generation.to_string() });
    }
    let Ok(stored) = shared.mutate(|s| s.upsert(res, obj)) else {
        return;
    };
    let mut log = lock(events);
    if log.len() >= MAX_RECORDED {
        log.pop_front();
    }
    log.push_back(ChurnEvent {
        name: name.to_owned(),
        rv: object_rv(&stored),
        created,
    });
}
