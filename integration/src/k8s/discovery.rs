//! Discovery documents (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) built from
//! the registered resource types, in the shapes client-go's discovery client decodes.

use serde_json::{json, Value};

use super::resource::Res;

/// Verbs every fake resource supports (deletecollection is refused, and not listed).
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server_address }],
    })
}

/// `/apis`: every non-core group with its versions (one preferred version each).
pub fn groups(resources: &[Res]) -> Value {
    let mut names: Vec<&str> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        if !names.contains(&r.group.as_str()) {
            names.push(&r.group);
        }
    }
    let groups: Vec<Value> = names
        .iter()
        .map(|group| {
            let mut versions: Vec<&str> = Vec::new();
            for r in resources.iter().filter(|r| r.group == *group) {
                if !versions.contains(&r.version.as_str()) {
                    versions.push(&r.version);
                }
            }
            let entries: Vec<Value> = versions
                .iter()
                .map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v }))
                .collect();
            let preferred = entries.first().cloned().unwrap_or(Value::Null);
            json!({ "name": group, "versions": entries, "preferredVersion": preferred })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `/api/v1` or `/apis/<g>/<v>`; `None` if no type is registered in that group version.
pub fn resource_list(resources: &[Res], group: &str, version: &str) -> Option<Value> {
    let mut entries = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        entries.push(json!({
            "name": r.resource,
            "singularName": r.singular(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        }));
        for sub in std::iter::once(&"status").chain(r.extra_subresources()) {
            entries.push(json!({
                "name": format!("{}/{sub}", r.resource),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if entries.is_empty() {
        return None;
    }
    let group_version = Res::new(group, version, "", "", false).api_version();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_list_each_group_once() {
        let doc = groups(&Res::defaults());
        let names: Vec<&str> = doc["groups"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(
            names,
            ["coordination.k8s.io", "certificates.k8s.io", "example.com"]
        );
        assert_eq!(
            doc["groups"][2]["preferredVersion"]["groupVersion"],
            "example.com/v1"
        );
    }

    #[test]
    fn resource_lists_name_their_group_version() {
        let core = resource_list(&Res::defaults(), "", "v1").unwrap_or_default();
        assert_eq!(core["groupVersion"], "v1");
        assert!(core["resources"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "pods/status")));
        assert!(resource_list(&Res::defaults(), "apps", "v1").is_none());
        let certs =
            resource_list(&Res::defaults(), "certificates.k8s.io", "v1").unwrap_or_default();
        assert!(certs["resources"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["name"] == "certificatesigningrequests/approval")));
    }
}
