//! Reading the few fields the cache needs out of upstream JSON (objects, lists, watch
//! events) without building a full tree; anything malformed is refused as `BadJson`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::CacheError;

/// An object as stored: its identity, resourceVersion and exact JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredObject {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
    pub resource_version: Option<String>,
    pub json: Bytes,
}

/// What a list (or the watches keeping it current) knows beyond its items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ListMeta {
    /// `PodList`; empty when only watch events were seen.
    pub kind: String,
    pub api_version: String,
    pub resource_version: Option<String>,
}

/// A list response split into its metadata and items.
#[derive(Debug)]
pub(crate) struct ParsedList {
    pub meta: ListMeta,
    pub items: Vec<StoredObject>,
    /// One page of a paginated list (`continue` in the request or the response):
    /// not the whole set.
    pub partial: bool,
}

/// One watch event, decoded.
#[derive(Debug)]
pub(crate) enum WatchEvent {
    /// ADDED or MODIFIED.
    Upsert(StoredObject),
    Deleted(StoredObject),
    /// Only advances the resourceVersion.
    Bookmark(Option<String>),
    /// ERROR and unknown types: nothing to store.
    Ignored,
}

#[derive(Deserialize)]
struct Head {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    metadata: MetaHead,
}

#[derive(Deserialize, Default)]
struct MetaHead {
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
}

#[derive(Deserialize)]
struct ListBody<'a> {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    metadata: MetaHead,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct EventBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a RawValue,
}

fn bad_json(what: &'static str) -> impl Fn(String) -> CacheError {
    move |reason| CacheError::BadJson { what, reason }
}

/// Parses one object (get/create/update/patch response or watch object).
pub(crate) fn parse_object(json: Bytes) -> Result<StoredObject, CacheError> {
    let head: Head =
        serde_json::from_slice(&json).map_err(|e| bad_json("object")(e.to_string()))?;
    stored(head, json, "object")
}

fn stored(head: Head, json: Bytes, what: &'static str) -> Result<StoredObject, CacheError> {
    let name = head
        .metadata
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad_json(what)("no metadata.name".into()))?;
    Ok(StoredObject {
        namespace: head.metadata.namespace.unwrap_or_default(),
        name,
        resource_version: head.metadata.resource_version,
        json,
    })
}

/// Parses a list response; items get the `kind`/`apiVersion` they lack in typed lists,
/// so a get answered from a list item looks like the apiserver's.
/// `later_page`: the request carried a `continue` token.
pub(crate) fn parse_list(json: &[u8], later_page: bool) -> Result<ParsedList, CacheError> {
    let body: ListBody =
        serde_json::from_slice(json).map_err(|e| bad_json("list")(e.to_string()))?;
    let kind = body.kind.unwrap_or_default();
    let api_version = body.api_version.unwrap_or_default();
    let item_kind = kind.strip_suffix("List").unwrap_or_default();
    let mut items = Vec::new();
    for raw in body.items.unwrap_or_default() {
        let head: Head =
            serde_json::from_str(raw.get()).map_err(|e| bad_json("list item")(e.to_string()))?;
        let mut missing = Vec::new();
        if head.kind.is_none() && !item_kind.is_empty() {
            missing.push(("kind", item_kind));
        }
        if head.api_version.is_none() && !api_version.is_empty() {
            missing.push(("apiVersion", api_version.as_str()));
        }
        let json = with_fields(raw.get(), &missing);
        items.push(stored(head, json, "list item")?);
    }
    Ok(ParsedList {
        meta: ListMeta {
            kind,
            api_version,
            resource_version: body.metadata.resource_version,
        },
        items,
        partial: later_page || body.metadata.continue_token.is_some_and(|c| !c.is_empty()),
    })
}

/// Prepends `"key":"value"` members to a JSON object's text.
fn with_fields(object: &str, fields: &[(&str, &str)]) -> Bytes {
    let object = object.trim();
    let Some(rest) = object.strip_prefix('{') else {
        return Bytes::copy_from_slice(object.as_bytes());
    };
    let mut out = String::with_capacity(object.len() + 64);
    out.push('{');
    for (key, value) in fields {
        out.push_str(&serde_json::Value::from(*key).to_string());
        out.push(':');
        out.push_str(&serde_json::Value::from(*value).to_string());
        out.push(',');
    }
    if rest.trim_start().starts_with('}') {
        out.pop();
    }
    out.push_str(rest);
    Bytes::from(out)
}

/// Parses one watch event line.
pub(crate) fn parse_event(line: &[u8]) -> Result<WatchEvent, CacheError> {
    let event: EventBody =
        serde_json::from_slice(line).map_err(|e| bad_json("watch event")(e.to_string()))?;
    let object = || -> Result<StoredObject, CacheError> {
        let json = Bytes::copy_from_slice(event.object.get().as_bytes());
        let head: Head = serde_json::from_str(event.object.get())
            .map_err(|e| bad_json("watch event object")(e.to_string()))?;
        stored(head, json, "watch event object")
    };
    Ok(match event.kind.as_str() {
        "ADDED" | "MODIFIED" => WatchEvent::Upsert(object()?),
        "DELETED" => WatchEvent::Deleted(object()?),
        "BOOKMARK" => {
            let head: Head = serde_json::from_str(event.object.get())
                .map_err(|e| bad_json("bookmark object")(e.to_string()))?;
            WatchEvent::Bookmark(head.metadata.resource_version)
        }
        _ => WatchEvent::Ignored,
    })
}

/// Whether `new` is older than `stored`: only when both are integers (resourceVersions
/// are opaque; anything unparsable counts as newer).
pub(crate) fn is_older(new: Option<&str>, stored: Option<&str>) -> bool {
    match (
        new.and_then(|v| v.parse::<u64>().ok()),
        stored.and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(new), Some(stored)) => new < stored,
        _ => false,
    }
}

/// The newer of two resourceVersions (by [`is_older`]).
pub(crate) fn newest(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if is_older(Some(&a), Some(&b)) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The `<Kind>List` and apiVersion of a list whose items look like `object`.
pub(crate) fn kind_of(object: &[u8]) -> (String, String) {
    match serde_json::from_slice::<Head>(object) {
        Ok(head) => (
            head.kind.map(|k| format!("{k}List")).unwrap_or_default(),
            head.api_version.unwrap_or_default(),
        ),
        Err(_) => Default::default(),
    }
}

/// The value at a dotted `path` of a JSON object's text, scanning only the members on
/// the way (no full tree is built): `Ok(None)` when a member is missing, `Err` when the
/// text (or a value on the way) is not a JSON object.
pub(crate) fn raw_lookup<'a>(
    json: &'a str,
    path: &str,
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut current: &'a RawValue = serde_json::from_str(json)?;
    for key in path.split('.') {
        let members: std::collections::BTreeMap<String, &'a RawValue> =
            serde_json::from_str(current.get())?;
        match members.get(key) {
            Some(next) => current = next,
            None => return Ok(None),
        }
    }
    Ok(Some(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_items_gain_kind_and_api_version() {
        let list = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42"},
            "items":[{"metadata":{"name":"a","namespace":"d","resourceVersion":"40"}},{"metadata":{"name":"b"},"kind":"Pod"}]}"#;
        let parsed = parse_list(list, false).unwrap();
        assert_eq!(parsed.meta.kind, "PodList");
        assert_eq!(parsed.meta.resource_version.as_deref(), Some("42"));
        let first: serde_json::Value = serde_json::from_slice(&parsed.items[0].json).unwrap();
        assert_eq!(first["kind"], "Pod");
        assert_eq!(first["apiVersion"], "v1");
        assert_eq!(first["metadata"]["name"], "a");
        assert_eq!(parsed.items[0].namespace, "d");
        let second: serde_json::Value = serde_json::from_slice(&parsed.items[1].json).unwrap();
        assert_eq!(second["kind"], "Pod");
        assert_eq!(second["apiVersion"], "v1");
        assert_eq!(with_fields("{ }", &[("kind", "X")]), "{\"kind\":\"X\" }");
    }

    #[test]
    fn malformed_input_is_bad_json() {
        for body in [
            &b"{"[..],
            b"[]",
            b"{\"metadata\":{}}",
            b"{\"metadata\":{\"name\":\"a\"}} x",
        ] {
            assert!(matches!(
                parse_object(Bytes::copy_from_slice(body)),
                Err(CacheError::BadJson { .. })
            ));
        }
        assert!(matches!(
            parse_list(b"{\"items\":[{\"metadata\":{}}]}", false),
            Err(CacheError::BadJson { .. })
        ));
        assert!(matches!(
            parse_event(b"{\"type\":\"ADDED\"}"),
            Err(CacheError::BadJson { .. })
        ));
        assert!(matches!(
            parse_event(b"{\"type\":\"ADDED\",\"object\":{\"metadata\":"),
            Err(CacheError::BadJson { .. })
        ));
    }

    #[test]
    fn events_are_classified() {
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}"#;
        assert!(matches!(parse_event(added).unwrap(), WatchEvent::Upsert(o) if o.name == "a"));
        let bookmark =
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}"#;
        assert!(
            matches!(parse_event(bookmark).unwrap(), WatchEvent::Bookmark(Some(rv)) if rv == "9")
        );
        let error = br#"{"type":"ERROR","object":{"kind":"Status","code":410}}"#;
        assert!(matches!(parse_event(error).unwrap(), WatchEvent::Ignored));
    }

    #[test]
    fn raw_lookup_walks_dotted_paths() {
        let json = r#"{"a":{"b":{"c":"x"},"n":3},"s":"t"}"#;
        assert_eq!(raw_lookup(json, "a.b.c").unwrap().unwrap().get(), "\"x\"");
        assert_eq!(raw_lookup(json, "a.n").unwrap().unwrap().get(), "3");
        assert!(raw_lookup(json, "a.missing").unwrap().is_none());
        assert!(
            raw_lookup(json, "s.deeper").is_err(),
            "a string has no members"
        );
        assert!(raw_lookup("{", "a").is_err());
    }

    #[test]
    fn resource_versions_compare_as_integers_when_they_can() {
        assert!(is_older(Some("9"), Some("10")));
        assert!(!is_older(Some("10"), Some("9")));
        assert!(!is_older(Some("10"), Some("10")));
        assert!(!is_older(Some("abc"), Some("10")));
        assert!(!is_older(None, Some("10")));
        assert_eq!(
            newest(Some("9".into()), Some("10".into())).as_deref(),
            Some("10")
        );
        assert_eq!(newest(None, Some("3".into())).as_deref(), Some("3"));
    }
}
