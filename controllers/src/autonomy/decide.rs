//! What a pod's tolerations should be, given its node's autonomy annotation: the sans-IO
//! heart of the autonomy controller.

use k8s_openapi::api::core::v1::Toleration;
use serde_json::{json, Value};

use super::duration::Autonomy;

/// Taint the node lifecycle controller puts on a node whose kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint on a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The two taints, in the order missing tolerations are added.
pub const TAINTS: [&str; 2] = [NOT_READY, UNREACHABLE];
/// The node annotation that makes a node autonomous.
pub const NODE_ANNOTATION: &str = "edgetunnel.io/autonomy-duration";
/// The pod annotation marking pods this controller changed (value: the node's annotation).
pub const POD_MARKER: &str = "edgetunnel.io/autonomy-tolerations";
/// What the DefaultTolerationSeconds admission plugin gives every pod: where a pod goes
/// back to when its node stops being autonomous (tolerations cannot be removed).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// What the node says, for one pod's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Annotated with a valid duration; `value` is the annotation as written.
    Autonomous { value: String, autonomy: Autonomy },
    /// No annotation, or one that does not parse (warned about elsewhere).
    Ordinary,
}

/// The change to send for one pod: its complete toleration list (tolerations have no merge
/// key, so a strategic merge patch replaces the list) and the marker to set or drop.
#[derive(Debug, Clone, PartialEq)]
pub struct PodChange {
    pub tolerations: Vec<Toleration>,
    /// `Some(v)`: set the marker to `v`; `None`: remove it.
    pub marker: Option<String>,
}

impl PodChange {
    /// The strategic merge patch, with `resourceVersion` as precondition (409 if the pod
    /// changed since it was read).
    pub fn to_patch(&self, resource_version: &str) -> Value {
        json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": { POD_MARKER: self.marker },
            },
            "spec": { "tolerations": self.tolerations },
        })
    }
}

fn is_ours(t: &Toleration) -> bool {
    t.effect.as_deref() == Some("NoExecute")
        && t.key.as_deref().is_some_and(|k| TAINTS.contains(&k))
}

/// The pod's tolerations with the two taints' NoExecute tolerations set to `seconds`
/// (`None`: forever), missing ones added with operator Exists.
fn with_seconds(tolerations: &[Toleration], seconds: Option<i64>) -> Vec<Toleration> {
    let mut out: Vec<Toleration> = tolerations
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if is_ours(&t) {
                t.toleration_seconds = seconds;
            }
            t
        })
        .collect();
    for taint in TAINTS {
        if !out
            .iter()
            .any(|t| is_ours(t) && t.key.as_deref() == Some(taint))
        {
            out.push(Toleration {
                key: Some(taint.to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                toleration_seconds: seconds,
                value: None,
            });
        }
    }
    out
}

/// Decides one pod: `None` when it is as it should be.
///
/// - Autonomous node: both tolerations carry the node's duration (none for forever), and
///   the marker holds the annotation's value.
/// - Ordinary node, pod marked by us: both back to 300 s, marker removed.
/// - Ordinary node, pod not marked: never touched.
pub fn decide(
    tolerations: &[Toleration],
    marker: Option<&str>,
    node: &NodeState,
) -> Option<PodChange> {
    let (wanted, wanted_marker) = match node {
        NodeState::Autonomous { value, autonomy } => {
            let seconds = match autonomy {
                Autonomy::Seconds(s) => Some(*s),
                Autonomy::Forever => None,
            };
            (with_seconds(tolerations, seconds), Some(value.clone()))
        }
        NodeState::Ordinary if marker.is_some() => (
            with_seconds(tolerations, Some(DEFAULT_TOLERATION_SECONDS)),
            None,
        ),
        NodeState::Ordinary => return None,
    };
    if wanted == tolerations && wanted_marker.as_deref() == marker {
        return None;
    }
    Some(PodChange {
        tolerations: wanted,
        marker: wanted_marker,
    })
}

/// What the controller's index keeps of a pod's tolerations: the `tolerationSeconds` of
/// each NoExecute toleration of the two taints (a few bytes instead of the whole list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relevant(Vec<(u8, Option<i64>)>);

impl Relevant {
    /// Keeps what [`decide`] looks at.
    pub fn of(tolerations: &[Toleration]) -> Self {
        Self(
            tolerations
                .iter()
                .filter(|t| is_ours(t))
                .map(|t| {
                    let which = u8::from(t.key.as_deref() == Some(UNREACHABLE));
                    (which, t.toleration_seconds)
                })
                .collect(),
        )
    }

    /// Stand-in tolerations for [`decide`]: it gives the same yes/no answer on these as on
    /// the full list, since it changes only these and leaves others alone.
    pub fn tolerations(&self) -> Vec<Toleration> {
        self.0
            .iter()
            .map(|(which, seconds)| Toleration {
                key: Some(TAINTS[usize::from(*which)].to_owned()),
                operator: Some("Exists".to_owned()),
                effect: Some("NoExecute".to_owned()),
                toleration_seconds: *seconds,
                value: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tol(key: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some(effect.into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    /// What DefaultTolerationSeconds gives every pod.
    fn defaults() -> Vec<Toleration> {
        vec![
            tol(NOT_READY, "NoExecute", Some(300)),
            tol(UNREACHABLE, "NoExecute", Some(300)),
        ]
    }

    fn autonomous(value: &str, autonomy: Autonomy) -> NodeState {
        NodeState::Autonomous {
            value: value.into(),
            autonomy,
        }
    }

    #[test]
    fn autonomous_node_sets_both_tolerations_and_marks_the_pod() {
        let node = autonomous("24h", Autonomy::Seconds(86_400));
        let change = decide(&defaults(), None, &node).unwrap();
        assert_eq!(change.marker.as_deref(), Some("24h"));
        assert_eq!(
            change.tolerations,
            vec![
                tol(NOT_READY, "NoExecute", Some(86_400)),
                tol(UNREACHABLE, "NoExecute", Some(86_400)),
            ]
        );
        // Applied: nothing more to do (idempotent).
        assert_eq!(decide(&change.tolerations, Some("24h"), &node), None);
    }

    #[test]
    fn missing_tolerations_are_added_and_others_kept() {
        let mine = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("edge".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        };
        let node = autonomous("0", Autonomy::Forever);
        let change = decide(std::slice::from_ref(&mine), None, &node).unwrap();
        assert_eq!(
            change.tolerations,
            vec![
                mine,
                tol(NOT_READY, "NoExecute", None),
                tol(UNREACHABLE, "NoExecute", None),
            ]
        );
    }

    #[test]
    fn only_noexecute_tolerations_of_the_two_taints_change() {
        let tolerations = vec![
            tol(UNREACHABLE, "NoSchedule", None),
            tol(UNREACHABLE, "NoExecute", Some(300)),
            tol(NOT_READY, "NoExecute", Some(300)),
        ];
        let change = decide(
            &tolerations,
            None,
            &autonomous("90m", Autonomy::Seconds(5400)),
        )
        .unwrap();
        assert_eq!(change.tolerations[0], tolerations[0]);
        assert_eq!(change.tolerations[1].toleration_seconds, Some(5400));
        assert_eq!(change.tolerations.len(), 3);
    }

    #[test]
    fn a_changed_duration_is_applied_again() {
        let at_24h = decide(
            &defaults(),
            None,
            &autonomous("24h", Autonomy::Seconds(86_400)),
        )
        .unwrap();
        let at_1h = decide(
            &at_24h.tolerations,
            Some("24h"),
            &autonomous("1h", Autonomy::Seconds(3600)),
        )
        .unwrap();
        assert_eq!(at_1h.tolerations[0].toleration_seconds, Some(3600));
        assert_eq!(at_1h.marker.as_deref(), Some("1h"));
        // Same seconds, other spelling: only the marker follows.
        let respelled = decide(
            &at_1h.tolerations,
            Some("1h"),
            &autonomous("60m", Autonomy::Seconds(3600)),
        )
        .unwrap();
        assert_eq!(respelled.tolerations, at_1h.tolerations);
        assert_eq!(respelled.marker.as_deref(), Some("60m"));
    }

    #[test]
    fn ordinary_nodes_restore_only_marked_pods() {
        let patched = decide(&defaults(), None, &autonomous("0", Autonomy::Forever)).unwrap();
        let back = decide(&patched.tolerations, Some("0"), &NodeState::Ordinary).unwrap();
        assert_eq!(back.tolerations, defaults());
        assert_eq!(back.marker, None);
        // Not marked: never touched, whatever its tolerations.
        assert_eq!(
            decide(&patched.tolerations, None, &NodeState::Ordinary),
            None
        );
        assert_eq!(decide(&[], None, &NodeState::Ordinary), None);
    }

    #[test]
    fn the_patch_replaces_the_list_and_carries_the_precondition() {
        let change = decide(&defaults(), Some("1h"), &NodeState::Ordinary).unwrap();
        let patch = change.to_patch("42");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["annotations"][POD_MARKER], Value::Null);
        assert_eq!(patch["spec"]["tolerations"][1]["tolerationSeconds"], 300);
        assert_eq!(patch["spec"]["tolerations"][1]["operator"], "Exists");
    }

    #[test]
    fn the_index_summary_gives_the_same_answers() {
        let mine = tol("dedicated", "NoSchedule", None);
        let cases = [
            vec![],
            defaults(),
            vec![mine.clone(), tol(UNREACHABLE, "NoExecute", None)],
            vec![tol(NOT_READY, "NoExecute", Some(3600)), mine],
        ];
        let nodes = [
            NodeState::Ordinary,
            autonomous("1h", Autonomy::Seconds(3600)),
            autonomous("0", Autonomy::Forever),
        ];
        for t in &cases {
            for marker in [None, Some("1h"), Some("0")] {
                for node in &nodes {
                    let full = decide(t, marker, node).is_some();
                    let summary = decide(&Relevant::of(t).tolerations(), marker, node).is_some();
                    assert_eq!(full, summary, "{t:?} {marker:?} {node:?}");
                }
            }
        }
    }
}
