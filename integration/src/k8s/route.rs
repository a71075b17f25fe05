//! Request paths and query strings, parsed into what the fake apiserver should serve.

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`, `/readyz`, `/livez` (and their sub-checks).
    Health,
    /// `/version`.
    Version,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every other group.
    Groups,
    /// `/api/v1` or `/apis/<group>/<version>`: the resources of one group version.
    Resources { group: String, version: String },
    /// A resource collection or object.
    Resource(ResourcePath),
    /// Anything else.
    Unknown,
}

/// The parts of a resource path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    /// `status` (or another subresource, which the fake refuses).
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix form.
    pub legacy_watch: bool,
}

/// Parses a request path (without the query).
pub fn parse_path(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", version] => Route::Resources {
            group: String::new(),
            version: (*version).to_owned(),
        },
        ["apis", group, version] => Route::Resources {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        },
        ["api", version, rest @ ..] => resource_route("", version, rest),
        ["apis", group, version, rest @ ..] => resource_route(group, version, rest),
        _ => Route::Unknown,
    }
}

fn resource_route(group: &str, version: &str, rest: &[&str]) -> Route {
    let (legacy_watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Route::Unknown,
    };
    if resource.is_empty() || name.is_some_and(str::is_empty) {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
        legacy_watch,
    })
}

/// The query parameters the fake understands (others are ignored, as unknown ones are by
/// the real apiserver).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub watch: bool,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents=true` (watch-list): current state as ADDED, then a BOOKMARK
    /// annotated `k8s.io/initial-events-end`.
    pub send_initial_events: bool,
    /// Page size of a list (0 or absent: everything).
    pub limit: usize,
    /// Continue token of the previous page.
    pub continue_token: Option<String>,
    pub label_selector: String,
    pub field_selector: String,
}

/// Parses a query string (`a=b&c=d`, percent-encoded).
pub fn parse_query(query: &str) -> Query {
    let mut q = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match percent_decode(k).as_str() {
            "watch" => q.watch = v == "1" || v == "true",
            "resourceVersion" => q.resource_version = Some(v),
            "resourceVersionMatch" => q.resource_version_match = Some(v),
            "timeoutSeconds" => q.timeout_seconds = v.parse().ok(),
            "allowWatchBookmarks" => q.allow_watch_bookmarks = v == "1" || v == "true",
            "sendInitialEvents" => q.send_initial_events = v == "1" || v == "true",
            "limit" => q.limit = v.parse().unwrap_or(0),
            "continue" => q.continue_token = Some(v).filter(|t| !t.is_empty()),
            "labelSelector" => q.label_selector = v,
            "fieldSelector" => q.field_selector = v,
            _ => {}
        }
    }
    q
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse_path(path) {
            Route::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn discovery_and_health_paths() {
        assert_eq!(parse_path("/readyz"), Route::Health);
        assert_eq!(parse_path("/version"), Route::Version);
        assert_eq!(parse_path("/api"), Route::CoreVersions);
        assert_eq!(parse_path("/apis/"), Route::Groups);
        assert_eq!(
            parse_path("/apis/coordination.k8s.io/v1"),
            Route::Resources {
                group: "coordination.k8s.io".into(),
                version: "v1".into()
            }
        );
        assert_eq!(parse_path("/metrics"), Route::Unknown);
    }

    #[test]
    fn resource_paths() {
        let r = res("/api/v1/pods");
        assert_eq!(
            (r.namespace, r.resource, r.name),
            (None, "pods".into(), None)
        );
        let r = res("/api/v1/namespaces/kube-system/pods/p1/status");
        assert_eq!(r.namespace.as_deref(), Some("kube-system"));
        assert_eq!(r.name.as_deref(), Some("p1"));
        assert_eq!(r.subresource.as_deref(), Some("status"));
        let r = res("/apis/example.com/v1/namespaces/ns/widgets/w");
        assert_eq!(
            (r.group.as_str(), r.name.as_deref()),
            ("example.com", Some("w"))
        );
        let r = res("/api/v1/namespaces/ns");
        assert_eq!(
            (r.resource.as_str(), r.name.as_deref()),
            ("namespaces", Some("ns"))
        );
        assert!(res("/api/v1/watch/namespaces/ns/pods").legacy_watch);
        assert_eq!(
            parse_path("/api/v1/namespaces/a/pods/b/c/d"),
            Route::Unknown
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        let q = parse_query("watch=1&resourceVersion=12&labelSelector=app%3Dweb%2Ctier+in+%28a%29&timeoutSeconds=5&allowWatchBookmarks=true");
        assert!(q.watch && q.allow_watch_bookmarks);
        assert_eq!(q.resource_version.as_deref(), Some("12"));
        assert_eq!(q.label_selector, "app=web,tier in (a)");
        assert_eq!(q.timeout_seconds, Some(5));
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
