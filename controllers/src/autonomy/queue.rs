//! A deduplicating work queue of pods: a pod waiting already is not queued twice; a pod that
//! failed is queued again after a backoff growing with its failures.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;

use super::index::PodKey;
use super::{FIRST_RETRY, MAX_RETRY};

#[derive(Default)]
struct State {
    pending: HashSet<PodKey>,
    failures: HashMap<PodKey, u32>,
}

/// The producer side; the consumer is the stream [`Queue::new`] returns.
pub struct Queue {
    tx: mpsc::UnboundedSender<PodKey>,
    state: Arc<Mutex<State>>,
}

/// The wait before retry number `failures` (1-based).
pub fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << exp).min(MAX_RETRY)
}

impl Queue {
    /// A queue and the stream of keys to work on.
    pub fn new() -> (Self, impl Stream<Item = PodKey> + Send) {
        let (tx, rx) = mpsc::unbounded_channel::<PodKey>();
        let state = Arc::new(Mutex::new(State::default()));
        let taken = state.clone();
        let stream = futures::stream::unfold((rx, taken), |(mut rx, state)| async move {
            let key = rx.recv().await?;
            lock(&state).pending.remove(&key);
            Some((key, (rx, state)))
        });
        (Self { tx, state }, stream)
    }

    /// Queues a pod unless it is waiting already.
    pub fn push(&self, key: PodKey) {
        if lock(&self.state).pending.insert(key.clone()) {
            // The receiver lives as long as the controller; a send after it is gone is moot.
            let _ = self.tx.send(key);
        }
    }

    /// Queues a pod after `delay`.
    pub fn push_after(&self, key: PodKey, delay: Duration) {
        let tx = self.tx.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if lock(&state).pending.insert(key.clone()) {
                let _ = tx.send(key);
            }
        });
    }

    /// Counts a failure of `key`; returns how long to wait before trying it again.
    pub fn failed(&self, key: &PodKey) -> Duration {
        let mut state = lock(&self.state);
        let n = state.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        retry_delay(*n)
    }

    /// `key` succeeded (or is gone): its next failure starts the backoff afresh.
    pub fn forget(&self, key: &PodKey) {
        lock(&self.state).failures.remove(key);
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn retries_back_off_to_a_cap() {
        assert_eq!(retry_delay(1), FIRST_RETRY);
        assert_eq!(retry_delay(2), FIRST_RETRY * 2);
        assert_eq!(retry_delay(40), MAX_RETRY);
    }

    #[tokio::test]
    async fn a_waiting_pod_is_queued_once() {
        let (q, stream) = Queue::new();
        let mut stream = Box::pin(stream);
        let k = ("ns".to_owned(), "a".to_owned());
        q.push(k.clone());
        q.push(k.clone());
        q.push(("ns".into(), "b".into()));
        assert_eq!(stream.next().await, Some(k.clone()));
        // Taken: queued again on the next change.
        q.push(k.clone());
        assert_eq!(stream.next().await.map(|k| k.1), Some("b".to_owned()));
        assert_eq!(stream.next().await, Some(k));
    }
}
