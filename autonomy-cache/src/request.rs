//! A parsed Kubernetes API request, like the apiserver's `RequestInfoFactory`,
//! and the rule of which requests the cache records.

use super::error::RequestError;
use super::path::{query_pairs, split_path, MAX_TARGET_BYTES};

/// The Kubernetes verb of a request (method plus path shape plus `watch=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
    /// HEAD, OPTIONS, `proxy` paths and anything else the cache never answers.
    Other,
}

impl Verb {
    /// The lowercase Kubernetes name, for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Other => "other",
        }
    }
}

/// What a request addresses: a resource (collection or object) or a plain path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// `/api/v1/...` or `/apis/<group>/<version>/...`.
    Resource {
        /// Empty for the core group.
        group: String,
        version: String,
        /// `None` for cluster-scoped requests and lists across all namespaces.
        namespace: Option<String>,
        /// Plural resource name (`pods`).
        resource: String,
        /// `None` for collection requests.
        name: Option<String>,
        /// `status`, `log`, `exec`...
        subresource: Option<String>,
    },
    /// `/version`, `/api`, `/apis/<group>/<version>`, `/healthz`...
    NonResource,
}

/// A parsed Kubernetes API request: what the cache keys, records and answers by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// The Kubernetes verb (a GET of a collection is `List`, with `watch` `Watch`).
    pub verb: Verb,
    /// The decoded path without query or trailing slash, e.g. `/api/v1/pods`.
    pub path: String,
    /// Resource coordinates, or non-resource.
    pub kind: RequestKind,
    /// `labelSelector=`, decoded; `None` when absent or empty.
    pub label_selector: Option<String>,
    /// `fieldSelector=`, decoded; `None` when absent or empty.
    pub field_selector: Option<String>,
    /// `resourceVersion=`.
    pub resource_version: Option<String>,
    /// `timeoutSeconds=` (a held offline watch ends after it).
    pub timeout_seconds: Option<u64>,
    /// `watch=true`, or the legacy `/watch/` path prefix.
    pub watch: bool,
    /// `continue=`: a later page of a paginated list.
    pub continue_token: Option<String>,
    /// The body's media type from `Content-Type`, lowercased, parameters cut
    /// (`application/strategic-merge-patch+json`); `None` when absent. Not in the
    /// request target: the proxy sets it with [`RequestInfo::with_content_type`].
    pub content_type: Option<String>,
}

/// Resources never cached: authorization and certificate requests are answered per call.
const UNCACHED_RESOURCES: &[&str] = &[
    "certificatesigningrequests",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectrulesreviews",
    "tokenreviews",
];

/// Non-resource paths the cache keeps (clients need discovery before anything else).
fn cacheable_non_resource(segments: &[&str]) -> bool {
    matches!(
        segments,
        ["version"] | ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _]
    )
}

impl RequestInfo {
    /// Parses `method` and the request target; refuses traversal tricks, control
    /// characters and over-long targets with an error the proxy turns into a 400.
    pub fn parse(method: &str, path_and_query: &str) -> Result<RequestInfo, RequestError> {
        if path_and_query.len() > MAX_TARGET_BYTES {
            return Err(RequestError::TooLong {
                len: path_and_query.len(),
                max: MAX_TARGET_BYTES,
            });
        }
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(RequestError::BadMethod {
                method: method.into(),
            });
        }
        let (raw_path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let segments = split_path(raw_path)?;
        let mut info = RequestInfo {
            verb: Verb::Other,
            path: format!("/{}", segments.join("/")),
            kind: RequestKind::NonResource,
            label_selector: None,
            field_selector: None,
            resource_version: None,
            timeout_seconds: None,
            watch: false,
            continue_token: None,
            content_type: None,
        };
        info.read_query(query)?;
        info.verb = match method.to_ascii_uppercase().as_str() {
            "GET" => Verb::Get,
            "POST" => Verb::Create,
            "PUT" => Verb::Update,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ => Verb::Other,
        };
        info.read_resource(&segments);
        Ok(info)
    }

    /// Records the request's `Content-Type` header value (offline writes are decoded by it).
    pub fn with_content_type(mut self, header: Option<&str>) -> RequestInfo {
        self.content_type = header
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        self
    }

    fn read_query(&mut self, query: &str) -> Result<(), RequestError> {
        for (name, value) in query_pairs(query)? {
            match name.as_str() {
                "labelSelector" if self.label_selector.is_none() => {
                    self.label_selector = Some(value).filter(|v| !v.is_empty());
                }
                "fieldSelector" if self.field_selector.is_none() => {
                    self.field_selector = Some(value).filter(|v| !v.is_empty());
                }
                "resourceVersion" if self.resource_version.is_none() => {
                    self.resource_version = Some(value).filter(|v| !v.is_empty());
                }
                "continue" if self.continue_token.is_none() => {
                    self.continue_token = Some(value).filter(|v| !v.is_empty());
                }
                "timeoutSeconds" if self.timeout_seconds.is_none() && !value.is_empty() => {
                    let seconds = value.parse().map_err(|_| RequestError::BadNumber {
                        name: "timeoutSeconds",
                        value: value.clone(),
                    })?;
                    self.timeout_seconds = Some(seconds);
                }
                "watch" => {
                    self.watch |= match value.as_str() {
                        "" | "true" | "1" | "True" | "TRUE" => true,
                        "false" | "0" | "False" | "FALSE" => false,
                        _ => return Err(RequestError::BadBool { value }),
                    };
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Resource requests: the apiserver's `RequestInfoFactory` rules.
    fn read_resource(&mut self, segments: &[String]) {
        let (group, version, mut parts) = match segments {
            [api, version, rest @ ..] if api == "api" && !rest.is_empty() => {
                (String::new(), version.clone(), rest)
            }
            [apis, group, version, rest @ ..] if apis == "apis" && !rest.is_empty() => {
                (group.clone(), version.clone(), rest)
            }
            _ => return,
        };
        match parts.first().map(String::as_str) {
            Some("watch") => {
                self.watch = true;
                parts = &parts[1..];
            }
            Some("proxy") => {
                self.verb = Verb::Other;
                parts = &parts[1..];
            }
            _ => {}
        }
        let mut namespace = None;
        if parts.first().map(String::as_str) == Some("namespaces") && parts.len() > 1 {
            namespace = Some(parts[1].clone());
            if parts.len() > 2 && !matches!(parts[2].as_str(), "status" | "finalize") {
                parts = &parts[2..];
            }
        }
        let Some(resource) = parts.first().cloned() else {
            return;
        };
        let name = parts.get(1).cloned();
        let subresource = parts.get(2).cloned();
        if self.watch && self.verb == Verb::Get {
            self.verb = Verb::Watch;
        } else if name.is_none() {
            self.verb = match self.verb {
                Verb::Get => Verb::List,
                Verb::Delete => Verb::DeleteCollection,
                other => other,
            };
        }
        self.kind = RequestKind::Resource {
            group,
            version,
            namespace,
            resource,
            name,
            subresource,
        };
    }

    /// The path segments (already validated at parse time).
    fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Whether the cache records responses to this request: get/list/watch of any
    /// resource and create/update/patch results (object or its `status`), discovery GETs;
    /// never deletes, proxy, exec/log/... subresources, CSRs or access reviews.
    pub fn cacheable(&self) -> bool {
        match &self.kind {
            RequestKind::NonResource => {
                self.verb == Verb::Get && cacheable_non_resource(&self.segments())
            }
            RequestKind::Resource {
                resource,
                subresource,
                ..
            } => {
                let verb_ok = matches!(
                    self.verb,
                    Verb::Get
                        | Verb::List
                        | Verb::Watch
                        | Verb::Create
                        | Verb::Update
                        | Verb::Patch
                );
                let subresource_ok = matches!(subresource.as_deref(), None | Some("status"));
                let events_create = self.verb == Verb::Create && resource == "events";
                verb_ok
                    && subresource_ok
                    && !events_create
                    && !UNCACHED_RESOURCES.contains(&resource.as_str())
            }
        }
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
