//! The autonomy controller's memory: per node its annotation and its pods, per pod the few
//! fields [`decide`] needs. No whole objects are kept (docs/operations.md gives the cost).

use std::collections::{HashMap, HashSet};

use super::decide::{decide, NodeState, Relevant};
use super::duration::parse_autonomy;

/// A pod's namespace and name.
pub type PodKey = (String, String);

#[derive(Debug, Default)]
struct NodeEntry {
    /// Seen in the node watch (pods may name a node before it is seen).
    known: bool,
    annotation: Option<String>,
    pods: HashSet<PodKey>,
}

#[derive(Debug)]
struct PodEntry {
    node: String,
    relevant: Relevant,
    marker: Option<String>,
}

/// Nodes and bound pods, kept current by the two watches.
#[derive(Debug, Default)]
pub struct Index {
    nodes: HashMap<String, NodeEntry>,
    pods: HashMap<PodKey, PodEntry>,
    /// (node, value) pairs already warned about as invalid.
    warned: HashSet<(String, String)>,
}

impl Index {
    /// The node's state for decisions; `None` while the node has not been seen (its pods
    /// wait for it rather than being restored by mistake).
    pub fn node_state(&mut self, node: &str) -> Option<NodeState> {
        let entry = self.nodes.get(node).filter(|e| e.known)?;
        let Some(value) = entry.annotation.clone() else {
            return Some(NodeState::Ordinary);
        };
        match parse_autonomy(&value) {
            Ok(autonomy) => Some(NodeState::Autonomous { value, autonomy }),
            Err(e) => {
                if self.warned.insert((node.to_owned(), value)) {
                    tracing::warn!(node, error = %e, "invalid edgetunnel.io/autonomy-duration; the node is treated as not autonomous");
                }
                Some(NodeState::Ordinary)
            }
        }
    }

    /// Nodes carrying the annotation now (valid or not).
    pub fn annotated_nodes(&self) -> usize {
        self.nodes
            .values()
            .filter(|e| e.known && e.annotation.is_some())
            .count()
    }

    /// A node was added or changed; returns its pods that need a decision made again.
    pub fn apply_node(&mut self, name: &str, annotation: Option<String>) -> Vec<PodKey> {
        let entry = self.nodes.entry(name.to_owned()).or_default();
        let changed = !entry.known || entry.annotation != annotation;
        entry.known = true;
        entry.annotation = annotation;
        if !changed {
            return Vec::new();
        }
        let pods: Vec<PodKey> = entry.pods.iter().cloned().collect();
        pods.into_iter().filter(|k| self.needs_work(k)).collect()
    }

    /// A node was deleted: its pods are left alone (the pod garbage collector removes them).
    pub fn delete_node(&mut self, name: &str) {
        if let Some(entry) = self.nodes.get_mut(name) {
            entry.known = false;
            entry.annotation = None;
        }
        self.drop_empty(name);
    }

    /// After a re-list: nodes not in `present` are gone.
    pub fn retain_nodes(&mut self, present: &HashSet<String>) {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|(n, e)| e.known && !present.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.delete_node(&n);
        }
    }

    /// A bound pod was added or changed; true when it needs a decision made.
    pub fn apply_pod(
        &mut self,
        key: PodKey,
        node: String,
        relevant: Relevant,
        marker: Option<String>,
    ) -> bool {
        if let Some(old) = self.pods.get(&key) {
            if old.node != node {
                let old_node = old.node.clone();
                self.unlink(&key, &old_node);
            }
        }
        self.nodes
            .entry(node.clone())
            .or_default()
            .pods
            .insert(key.clone());
        self.pods.insert(
            key.clone(),
            PodEntry {
                node,
                relevant,
                marker,
            },
        );
        self.needs_work(&key)
    }

    /// A pod was deleted (or unbound, which the API does not allow).
    pub fn delete_pod(&mut self, key: &PodKey) {
        if let Some(old) = self.pods.remove(key) {
            self.unlink(key, &old.node);
        }
    }

    /// After a re-list: pods not in `present` are gone.
    pub fn retain_pods(&mut self, present: &HashSet<PodKey>) {
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.delete_pod(&k);
        }
    }

    /// Pods indexed now.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    fn unlink(&mut self, key: &PodKey, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.pods.remove(key);
        }
        self.drop_empty(node);
    }

    fn drop_empty(&mut self, node: &str) {
        if self
            .nodes
            .get(node)
            .is_some_and(|e| !e.known && e.pods.is_empty())
        {
            self.nodes.remove(node);
        }
    }

    fn needs_work(&mut self, key: &PodKey) -> bool {
        let Some(pod) = self.pods.get(key) else {
            return false;
        };
        let (node, tolerations, marker) = (
            pod.node.clone(),
            pod.relevant.tolerations(),
            pod.marker.clone(),
        );
        self.node_state(&node)
            .is_some_and(|state| decide(&tolerations, marker.as_deref(), &state).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autonomy::decide::{NOT_READY, UNREACHABLE};
    use k8s_openapi::api::core::v1::Toleration;

    fn key(name: &str) -> PodKey {
        ("ns".into(), name.into())
    }

    fn defaults() -> Relevant {
        let t = |k: &str| Toleration {
            key: Some(k.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(300),
            value: None,
        };
        Relevant::of(&[t(NOT_READY), t(UNREACHABLE)])
    }

    #[test]
    fn pods_wait_for_their_node_then_follow_its_annotation() {
        let mut ix = Index::default();
        assert!(!ix.apply_pod(key("a"), "edge-1".into(), defaults(), None));
        assert_eq!(ix.apply_node("edge-1", Some("24h".into())), vec![key("a")]);
        assert_eq!(ix.annotated_nodes(), 1);
        // The patch arrived through the watch: nothing to do.
        let patched = decide(
            &defaults().tolerations(),
            None,
            &ix.node_state("edge-1").unwrap(),
        )
        .unwrap();
        let relevant = Relevant::of(&patched.tolerations);
        assert!(!ix.apply_pod(
            key("a"),
            "edge-1".into(),
            relevant.clone(),
            Some("24h".into())
        ));
        assert!(ix.apply_node("edge-1", Some("24h".into())).is_empty());
        // Removed: the marked pod goes back.
        assert_eq!(ix.apply_node("edge-1", None), vec![key("a")]);
        assert_eq!(ix.annotated_nodes(), 0);
    }

    #[test]
    fn ordinary_nodes_pods_never_need_work() {
        let mut ix = Index::default();
        ix.apply_node("cloud-1", None);
        assert!(!ix.apply_pod(key("a"), "cloud-1".into(), defaults(), None));
        assert!(ix.apply_node("cloud-1", Some("nonsense".into())).is_empty());
    }

    #[test]
    fn relists_forget_what_is_gone() {
        let mut ix = Index::default();
        ix.apply_node("edge-1", Some("0".into()));
        ix.apply_pod(key("a"), "edge-1".into(), defaults(), None);
        ix.apply_pod(key("b"), "edge-1".into(), defaults(), None);
        ix.retain_pods(&[key("b")].into_iter().collect());
        assert_eq!(ix.pod_count(), 1);
        ix.retain_nodes(&HashSet::new());
        assert_eq!(ix.annotated_nodes(), 0);
        assert_eq!(ix.node_state("edge-1"), None);
        ix.delete_pod(&key("b"));
        assert!(ix.nodes.is_empty(), "{:?}", ix.nodes);
    }
}
