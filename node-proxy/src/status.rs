//! What the agent's `/readyz` says about the node proxy: whether it runs, why
//! it is offline, and whether its cache works. `/readyz` stays 200 while the
//! agent is connected (the tunnel works); the body tells what is wrong.

use autonomy_cache::{AutonomyCache, CacheHealth};
use std::sync::{Arc, Mutex, PoisonError};

use crate::health::{OfflineReason, Reachability};
use crate::prober::HubHealth;

/// Shared between the hub (which sets it) and the admin endpoint (which reads it).
#[derive(Clone, Default)]
pub struct HubStatus(Arc<Mutex<HubState>>);

#[derive(Default)]
enum HubState {
    /// No `--hub-addr`.
    #[default]
    Off,
    /// The hub could not start (the tunnel runs without it).
    Failed(String),
    Running {
        health: HubHealth,
        cache: AutonomyCache,
    },
}

impl HubStatus {
    /// The hub could not start.
    pub fn set_failed(&self, why: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = HubState::Failed(why);
    }

    /// The hub runs with this health and cache.
    pub fn set_running(&self, health: HubHealth, cache: AutonomyCache) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
            HubState::Running { health, cache };
    }

    /// One line for `/readyz`, e.g. `hub: offline (apiserver timeout); cache: ok`.
    pub fn summary(&self) -> String {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            HubState::Off => "hub: off".to_string(),
            HubState::Failed(why) => format!("hub: failed to start ({why})"),
            HubState::Running { health, cache } => {
                describe(health.current(), health.offline_reason(), &cache.health())
            }
        }
    }
}

/// The running hub's line.
pub fn describe(
    state: Reachability,
    offline: Option<OfflineReason>,
    cache: &CacheHealth,
) -> String {
    let state = match (state, offline) {
        (Reachability::Starting, _) => "starting".to_string(),
        (Reachability::Online, _) => "online".to_string(),
        (Reachability::Offline, Some(reason)) => format!("offline ({})", reason.label()),
        (Reachability::Offline, None) => "offline".to_string(),
    };
    format!("hub: {state}; cache: {cache}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use autonomy_cache::{CacheReset, ResetReason};

    #[test]
    fn the_line_names_state_reason_and_cache() {
        assert_eq!(
            describe(Reachability::Online, None, &CacheHealth::Ok),
            "hub: online; cache: ok"
        );
        let reset = CacheHealth::Reset(CacheReset {
            reason: ResetReason::Corrupt,
            detail: "invalid data".into(),
            moved_to: Some("/var/lib/c/cache.redb.corrupt-20261201T231500Z".into()),
        });
        assert_eq!(
            describe(
                Reachability::Offline,
                Some(OfflineReason::CertificateNameMismatch),
                &reset
            ),
            "hub: offline (apiserver certificate name mismatch); cache: degraded \
             (cache reset: corrupt file moved to /var/lib/c/cache.redb.corrupt-20261201T231500Z)"
        );
        let disabled = CacheHealth::Disabled("permission denied".into());
        assert_eq!(
            describe(Reachability::Starting, None, &disabled),
            "hub: starting; cache: disabled, proxy only (permission denied)"
        );
        assert_eq!(HubStatus::default().summary(), "hub: off");
    }
}
