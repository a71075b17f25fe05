//! Rewriting apiserver JSON without touching what a filter leaves alone: a
//! get body, the items of a list body, or the object of a watch event line
//! goes through `edit`; only objects `edit` changed are serialized again, and
//! everything else (the list envelope, untouched items, whitespace, key order)
//! keeps upstream's bytes. Anything that is not the JSON expected is passed
//! through unchanged: a filter never turns a response into an error.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Edits one object in place; returns whether it changed.
pub trait Edit: Fn(&mut Value) -> bool {}
impl<F: Fn(&mut Value) -> bool> Edit for F {}

/// A get response: the new body if `edit` changed the object.
pub fn object(body: &[u8], edit: impl Edit) -> Option<Bytes> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    if !value.is_object() || !edit(&mut value) {
        return None;
    }
    serde_json::to_vec(&value).ok().map(Bytes::from)
}

#[derive(Deserialize)]
struct Items<'a> {
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// A list response: the new body if `edit` changed any item, with only the
/// changed items re-serialized in place.
pub fn list(body: &[u8], edit: impl Edit) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let items = serde_json::from_str::<Items<'_>>(text).ok()?.items?;
    let mut splices: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for raw in items {
        let Ok(mut value) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        if !value.is_object() || !edit(&mut value) {
            continue;
        }
        let Ok(new) = serde_json::to_vec(&value) else {
            continue;
        };
        // `raw` borrows from `text`: its offset locates the item's bytes.
        let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
        splices.push((start, start + raw.get().len(), new));
    }
    if splices.is_empty() {
        return None;
    }
    let mut out = BytesMut::with_capacity(body.len());
    let mut at = 0;
    for (start, end, new) in splices {
        out.extend_from_slice(&body[at..start]);
        out.extend_from_slice(&new);
        at = end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out.freeze())
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    object: &'a RawValue,
}

/// One watch event line (no trailing newline): the new line if `edit`
/// changed the object of an ADDED, MODIFIED or DELETED event. BOOKMARK and
/// ERROR events pass unchanged.
pub fn event(line: &[u8], edit: impl Edit) -> Option<Bytes> {
    let text = std::str::from_utf8(line).ok()?;
    let event = serde_json::from_str::<Event<'_>>(text).ok()?;
    if !matches!(event.kind.as_str(), "ADDED" | "MODIFIED" | "DELETED") {
        return None;
    }
    let mut value: Value = serde_json::from_str(event.object.get()).ok()?;
    if !value.is_object() || !edit(&mut value) {
        return None;
    }
    let line = serde_json::json!({ "type": event.kind, "object": value });
    serde_json::to_vec(&line).ok().map(Bytes::from)
}

/// `object.metadata.<field>` as a string.
pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// `object.metadata.labels.<key>`.
pub fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get("metadata")?.get("labels")?.get(key)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rename_b(v: &mut Value) -> bool {
        if v["metadata"]["name"] == "b" {
            v["metadata"]["name"] = "B".into();
            return true;
        }
        false
    }

    #[test]
    fn lists_keep_upstream_bytes_outside_changed_items() {
        let body = br#"{"kind":"L", "items": [ {"metadata":{"name":"a"},"z":1,"a":2} ,
            {"metadata":{"name":"b"}}],"metadata":{"resourceVersion":"9"}}"#;
        assert_eq!(list(body, |_: &mut Value| false), None);
        let out = list(body, rename_b).unwrap();
        let expected = br#"{"kind":"L", "items": [ {"metadata":{"name":"a"},"z":1,"a":2} ,
            {"metadata":{"name":"B"}}],"metadata":{"resourceVersion":"9"}}"#;
        assert_eq!(&out[..], &expected[..]);
    }

    #[test]
    fn events_are_rewritten_only_when_their_object_changes() {
        let line = br#"{"type":"MODIFIED","object":{"metadata":{"name":"b"}}}"#;
        let out = event(line, rename_b).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "MODIFIED");
        assert_eq!(v["object"]["metadata"]["name"], "B");
        let other = br#"{"type":"ADDED","object":{"metadata":{"name":"a"}}}"#;
        assert_eq!(event(other, rename_b), None);
        let bookmark = br#"{"type":"BOOKMARK","object":{"metadata":{"name":"b"}}}"#;
        assert_eq!(event(bookmark, rename_b), None);
    }

    #[test]
    fn malformed_json_passes_through() {
        let always = |v: &mut Value| {
            v["x"] = 1.into();
            true
        };
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[1,2]",
            b"\xff\xfe",
            br#"{"items":[1,"x",null]}"#,
            br#"{"items":{"a":1}}"#,
            br#"{"items":null}"#,
            br#"{"type":"ADDED"}"#,
            br#"{"type":"ADDED","object":[1]}"#,
            br#"{"type":7,"object":{}}"#,
        ] {
            assert_eq!(list(bad, always), None, "{bad:?}");
            assert_eq!(event(bad, always), None, "{bad:?}");
        }
        for not_an_object in [&b""[..], b"{", b"null", b"[1,2]", b"\xff\xfe", b"\"s\""] {
            assert_eq!(object(not_an_object, always), None, "{not_an_object:?}");
        }
        assert!(object(b"{}", always).is_some());
    }
}
