//! Which resource types the fake apiserver serves, and how each one is named on the wire.

/// A resource type (group, version, plural name, kind, scope), as discovery describes it.
///
/// Tests name the type they seed or read with one of the constructors (`Res::pods()`...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Res {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// API version inside the group, e.g. `v1`.
    pub version: String,
    /// Plural lower-case resource name used in paths, e.g. `pods`.
    pub resource: String,
    /// Kind of one object, e.g. `Pod` (lists are `<Kind>List`).
    pub kind: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

impl Res {
    /// Builds any resource type, e.g. for a custom resource a test registers itself.
    pub fn new(group: &str, version: &str, resource: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            resource: resource.to_owned(),
            kind: kind.to_owned(),
            namespaced,
        }
    }

    /// Core `v1` pods.
    pub fn pods() -> Self {
        Self::new("", "v1", "pods", "Pod", true)
    }

    /// Core `v1` nodes (cluster-scoped).
    pub fn nodes() -> Self {
        Self::new("", "v1", "nodes", "Node", false)
    }

    /// `coordination.k8s.io/v1` leases, which kubelet renews as its heartbeat.
    pub fn leases() -> Self {
        Self::new("coordination.k8s.io", "v1", "leases", "Lease", true)
    }

    /// `certificates.k8s.io/v1` certificatesigningrequests (cluster-scoped), with the
    /// `approval` and `status` subresources.
    pub fn certificate_signing_requests() -> Self {
        Self::new(
            "certificates.k8s.io",
            "v1",
            "certificatesigningrequests",
            "CertificateSigningRequest",
            false,
        )
    }

    /// Subresources besides `status` this type serves.
    pub fn extra_subresources(&self) -> &'static [&'static str] {
        if *self == Self::certificate_signing_requests() {
            &["approval"]
        } else {
            &[]
        }
    }

    /// Core `v1` configmaps.
    pub fn configmaps() -> Self {
        Self::new("", "v1", "configmaps", "ConfigMap", true)
    }

    /// Core `v1` events, which kubelet posts.
    pub fn events() -> Self {
        Self::new("", "v1", "events", "Event", true)
    }

    /// Core `v1` namespaces (cluster-scoped).
    pub fn namespaces() -> Self {
        Self::new("", "v1", "namespaces", "Namespace", false)
    }

    /// A custom resource (`example.com/v1` widgets), to check that nothing is special-cased.
    pub fn widgets() -> Self {
        Self::new("example.com", "v1", "widgets", "Widget", true)
    }

    /// The types a fresh fake apiserver knows about.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::pods(),
            Self::nodes(),
            Self::namespaces(),
            Self::configmaps(),
            Self::events(),
            Self::leases(),
            Self::certificate_signing_requests(),
            Self::widgets(),
        ]
    }

    /// The `apiVersion` of objects of this type: `v1` or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The `kind` of a list of this type, e.g. `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The key objects of this type are stored under (versions share storage, as in etcd).
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.resource)
    }

    /// The singular name discovery reports (`pod` for `pods`).
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_names_the_group_only_outside_core() {
        assert_eq!(Res::pods().api_version(), "v1");
        assert_eq!(Res::leases().api_version(), "coordination.k8s.io/v1");
        assert_eq!(Res::widgets().list_kind(), "WidgetList");
    }

    #[test]
    fn storage_keys_differ_between_groups() {
        assert_ne!(Res::events().storage_key(), "events.k8s.io/events");
        assert_eq!(Res::pods().storage_key(), "/pods");
    }
}
