//! Faults a test can switch on to see how clients of the apiserver cope.

use std::time::Duration;

/// One injected misbehaviour; `path_prefix` limits it to request paths starting with it
/// ("" matches every path). Set with `FakeApiserver::set_fault`, cleared with `Fault::None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// Answer 200 `application/json` with a truncated, unparsable body.
    MalformedJson { path_prefix: String },
    /// Answer 200 with `bytes` bytes of JSON, generated while sending (not held in memory).
    HugeBody { path_prefix: String, bytes: u64 },
    /// Watches ignore `timeoutSeconds` and stay open until the client leaves.
    WatchNeverEnds,
    /// Answer a `Status` with this HTTP code and reason (e.g. 503 ServiceUnavailable).
    Status {
        path_prefix: String,
        code: u16,
        reason: String,
    },
    /// Wait `dur` before handling the request normally.
    Delay { path_prefix: String, dur: Duration },
}

/// What the request handler must do about the active fault for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Nothing: serve normally.
    Serve,
    /// Serve normally after this delay.
    DelayThenServe(Duration),
    /// Send the malformed body.
    Malformed,
    /// Send this many filler bytes.
    Huge(u64),
    /// Send this Status error.
    Status { code: u16, reason: String },
}

/// Body of [`FaultAction::Malformed`]: JSON cut off mid-object.
pub const MALFORMED_BODY: &[u8] =
    br#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"#;

impl Fault {
    /// The action for a request to `path`.
    pub fn action_for(&self, path: &str) -> FaultAction {
        match self {
            Self::MalformedJson { path_prefix } if path.starts_with(path_prefix.as_str()) => {
                FaultAction::Malformed
            }
            Self::HugeBody { path_prefix, bytes } if path.starts_with(path_prefix.as_str()) => {
                FaultAction::Huge(*bytes)
            }
            Self::Status {
                path_prefix,
                code,
                reason,
            } if path.starts_with(path_prefix.as_str()) => FaultAction::Status {
                code: *code,
                reason: reason.clone(),
            },
            Self::Delay { path_prefix, dur } if path.starts_with(path_prefix.as_str()) => {
                FaultAction::DelayThenServe(*dur)
            }
            _ => FaultAction::Serve,
        }
    }

    /// Whether watches should ignore their timeout.
    pub fn watch_never_ends(&self) -> bool {
        matches!(self, Self::WatchNeverEnds)
    }
}

/// The faults in force: `set_fault` replaces them, `add_fault` stacks one more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSet(Vec<Fault>);

impl FaultSet {
    /// Keeps only `fault` (none for [`Fault::None`]).
    pub fn replace(&mut self, fault: Fault) {
        self.0.clear();
        self.add(fault);
    }

    /// Adds `fault` to those in force.
    pub fn add(&mut self, fault: Fault) {
        if fault != Fault::None {
            self.0.push(fault);
        }
    }

    /// The first fault that applies to `path`, in the order they were added.
    pub fn action_for(&self, path: &str) -> FaultAction {
        self.0
            .iter()
            .map(|f| f.action_for(path))
            .find(|action| *action != FaultAction::Serve)
            .unwrap_or(FaultAction::Serve)
    }

    /// Whether any fault makes watches ignore their timeout.
    pub fn watch_never_ends(&self) -> bool {
        self.0.iter().any(Fault::watch_never_ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_only_under_their_prefix() {
        let f = Fault::Status {
            path_prefix: "/api/v1/pods".into(),
            code: 503,
            reason: "ServiceUnavailable".into(),
        };
        assert!(matches!(
            f.action_for("/api/v1/pods"),
            FaultAction::Status { code: 503, .. }
        ));
        assert_eq!(f.action_for("/api/v1/nodes"), FaultAction::Serve);
        let all = Fault::MalformedJson {
            path_prefix: String::new(),
        };
        assert_eq!(all.action_for("/version"), FaultAction::Malformed);
        assert!(serde_json::from_slice::<serde_json::Value>(MALFORMED_BODY).is_err());
        assert!(Fault::WatchNeverEnds.watch_never_ends());
        assert_eq!(Fault::WatchNeverEnds.action_for("/api"), FaultAction::Serve);
    }

    #[test]
    fn fault_sets_stack_and_replace() {
        let mut set = FaultSet::default();
        set.add(Fault::WatchNeverEnds);
        set.add(Fault::MalformedJson {
            path_prefix: "/api/v1/pods".into(),
        });
        assert!(set.watch_never_ends());
        assert_eq!(set.action_for("/api/v1/pods"), FaultAction::Malformed);
        assert_eq!(set.action_for("/version"), FaultAction::Serve);
        set.replace(Fault::None);
        assert_eq!(set, FaultSet::default());
    }
}
