//! Byte keys of the store. Every key starts with the component, so GC of a component
//! is a range delete; parts are NUL-separated (parsing refuses control characters).

use super::field_selector::FieldSelector;
use super::label_selector::LabelSelector;
use super::request::{RequestInfo, RequestKind};

/// Separates key parts.
const SEP: u8 = 0;

/// The owner of objects stored from get/create/update/patch responses.
pub(crate) const DIRECT_OWNER: &str = "=";

/// The collection a resource request addresses: component, group/version/resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Collection {
    pub component: String,
    /// `group/version/resource`; the core group is empty (`/v1/pods`).
    pub gvr: String,
}

/// A resource request's collection, namespace, name and list owner.
#[derive(Debug, Clone)]
pub(crate) struct ResourceKey {
    pub collection: Collection,
    pub namespace: String,
    pub name: Option<String>,
    /// Which list/watch set a list or watch keeps: scope namespace plus canonical selectors.
    pub list_owner: String,
}

impl ResourceKey {
    /// `None` for non-resource requests.
    pub(crate) fn of(component: &str, req: &RequestInfo) -> Option<ResourceKey> {
        let RequestKind::Resource {
            group,
            version,
            namespace,
            resource,
            name,
            ..
        } = &req.kind
        else {
            return None;
        };
        // A Namespace object is cluster-scoped, though its path names it as namespace.
        let namespace = match resource.as_str() {
            "namespaces" => String::new(),
            _ => namespace.clone().unwrap_or_default(),
        };
        let label = canonical(req.label_selector.as_deref(), |s| {
            LabelSelector::parse(s).map(|s| s.to_string()).ok()
        });
        let field = canonical(req.field_selector.as_deref(), |s| {
            FieldSelector::parse(s).map(|s| s.to_string()).ok()
        });
        Some(ResourceKey {
            collection: Collection {
                component: component.to_string(),
                gvr: format!("{group}/{version}/{resource}"),
            },
            list_owner: list_owner(&namespace, &label, &field),
            namespace,
            name: name.clone(),
        })
    }
}

fn canonical(selector: Option<&str>, parse: impl Fn(&str) -> Option<String>) -> String {
    let selector = selector.unwrap_or_default();
    parse(selector).unwrap_or_else(|| selector.to_string())
}

/// `L<namespace>\x1f<label>\x1f<field>`.
fn list_owner(namespace: &str, label: &str, field: &str) -> String {
    format!("L{namespace}\u{1f}{label}\u{1f}{field}")
}

/// The namespace a list owner covers (empty = all namespaces).
pub(crate) fn owner_namespace(owner: &str) -> &str {
    owner
        .strip_prefix('L')
        .and_then(|rest| rest.split('\u{1f}').next())
        .unwrap_or_default()
}

/// Joins parts with the separator.
pub(crate) fn key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The half-open range of keys that start with `parts` followed by the separator.
pub(crate) fn prefix_range(parts: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let mut start = key(parts);
    start.push(SEP);
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = SEP + 1;
    }
    (start, end)
}

/// The last part of a key (the object name, or the list owner).
pub(crate) fn last_part(key: &[u8]) -> &[u8] {
    key.rsplit(|b| *b == SEP).next().unwrap_or_default()
}

/// Objects: component, gvr, owner, namespace, name.
pub(crate) fn object_key(c: &Collection, owner: &str, namespace: &str, name: &str) -> Vec<u8> {
    key(&[&c.component, &c.gvr, owner, namespace, name])
}

/// Lists: component, gvr, owner.
pub(crate) fn list_key(c: &Collection, owner: &str) -> Vec<u8> {
    key(&[&c.component, &c.gvr, owner])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_selectors_share_an_owner() {
        let a = RequestInfo::parse("GET", "/api/v1/pods?labelSelector=b%3D1,a%3D2").unwrap();
        let b = RequestInfo::parse("GET", "/api/v1/pods?labelSelector=a%3D%3D2,b%3D1").unwrap();
        let c = RequestInfo::parse("GET", "/api/v1/pods?labelSelector=a%3D2").unwrap();
        let key = |r: &RequestInfo| ResourceKey::of("kubelet", r).unwrap().list_owner;
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let ns = RequestInfo::parse("GET", "/api/v1/namespaces/kube-system/pods").unwrap();
        assert_eq!(owner_namespace(&key(&ns)), "kube-system");
        assert_eq!(owner_namespace(&key(&a)), "");
    }

    #[test]
    fn prefix_ranges_hold_exactly_their_keys() {
        let (start, end) = prefix_range(&["kubelet"]);
        let inside = key(&["kubelet", "/v1/pods"]);
        let outside = key(&["kubelet2", "/v1/pods"]);
        assert!(start <= inside && inside < end);
        assert!(!(start <= outside && outside < end));
        assert_eq!(last_part(&inside), b"/v1/pods");
    }
}
