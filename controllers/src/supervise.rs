//! Runs a controller in a task of its own and restarts it with backoff when it ends, fails
//! or panics: a controller's trouble (apiserver away, a bug) never takes tunnel-server down.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First wait before a restart.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next failure restarts after [`FIRST_BACKOFF`].
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before the next restart: doubling from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`],
/// back to the first after a healthy run.
fn next_backoff(previous: Duration, ran_for: Duration) -> Duration {
    if ran_for >= HEALTHY_RUN {
        FIRST_BACKOFF
    } else {
        (previous * 2).min(MAX_BACKOFF)
    }
}

/// Runs `run()` forever: each run in a spawned task, restarted after it returns (an error
/// or, unexpectedly, `Ok`) or panics. Returns only when the surrounding task is aborted.
pub async fn supervise<F, Fut, E>(name: &'static str, run: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut backoff = FIRST_BACKOFF / 2;
    loop {
        let started = Instant::now();
        let outcome = tokio::spawn(run()).await;
        match outcome {
            Ok(Ok(())) => tracing::warn!(controller = name, "controller stopped; restarting"),
            Ok(Err(e)) => {
                tracing::warn!(controller = name, error = %e, "controller failed; restarting")
            }
            Err(e) if e.is_panic() => {
                tracing::error!(controller = name, "controller panicked; restarting")
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        }
        backoff = next_backoff(backoff, started.elapsed());
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let quick = Duration::from_millis(10);
        assert_eq!(next_backoff(FIRST_BACKOFF / 2, quick), FIRST_BACKOFF);
        assert_eq!(next_backoff(FIRST_BACKOFF, quick), 2 * FIRST_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF, quick), MAX_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF, HEALTHY_RUN), FIRST_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_controller_is_restarted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let task = tokio::spawn(supervise("test", move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                std::future::pending::<Result<(), String>>().await
            }
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        task.abort();
    }
}
