//! `limit`/`continue` list paging. Pages follow key order (namespace, then name); the
//! continue token carries the list's resourceVersion and the last key served. Unlike etcd,
//! later pages show current objects rather than a snapshot at that resourceVersion.

use serde_json::{json, Value};

use super::meta::meta_str;
use super::status::ApiError;

/// One page of a list and what the client needs to ask for the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Token for the next page, when items remain.
    pub continue_token: Option<String>,
    /// Items after this page (`metadata.remainingItemCount`).
    pub remaining: Option<usize>,
}

/// A decoded continue token: list resourceVersion and the last (namespace, name) served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    pub rv: u64,
    pub namespace: String,
    pub name: String,
}

impl ContinueToken {
    /// The opaque token text (hex of a small JSON document).
    pub fn encode(&self) -> String {
        let doc = json!({ "rv": self.rv, "start": [self.namespace, self.name] }).to_string();
        doc.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses a token from [`Self::encode`]; 400 for anything else.
    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::BadRequest(format!("continue key is not valid: {text:?}"));
        if !text.len().is_multiple_of(2) || text.len() > 8192 {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        let rv = doc["rv"].as_u64().ok_or_else(invalid)?;
        let start = |i: usize| doc["start"][i].as_str().map(str::to_owned);
        match (start(0), start(1)) {
            (Some(namespace), Some(name)) => Ok(Self {
                rv,
                namespace,
                name,
            }),
            _ => Err(invalid()),
        }
    }
}

/// The page of `items` (already filtered, in key order) after `after`, at most `limit` long.
pub fn page<T: AsRef<Value>>(
    items: Vec<T>,
    after: Option<&ContinueToken>,
    limit: usize,
    list_rv: u64,
) -> Page<T> {
    let key = |obj: &Value| {
        (
            meta_str(obj, "namespace").unwrap_or_default().to_owned(),
            meta_str(obj, "name").unwrap_or_default().to_owned(),
        )
    };
    let start = after.map(|t| (t.namespace.clone(), t.name.clone()));
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|obj| start.as_ref().is_none_or(|s| key(obj.as_ref()) > *s))
        .collect();
    if limit == 0 || rest.len() <= limit {
        return Page {
            items: rest,
            continue_token: None,
            remaining: None,
        };
    }
    let remaining = rest.len() - limit;
    rest.truncate(limit);
    let (namespace, name) = rest.last().map(|o| key(o.as_ref())).unwrap_or_default();
    let token = ContinueToken {
        rv: list_rv,
        namespace,
        name,
    };
    Page {
        items: rest,
        continue_token: Some(token.encode()),
        remaining: Some(remaining),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn objs(names: &[&str]) -> Vec<Arc<Value>> {
        names
            .iter()
            .map(|n| Arc::new(json!({"metadata": {"name": n, "namespace": "ns"}})))
            .collect()
    }

    fn names(page: &Page<Arc<Value>>) -> Vec<String> {
        page.items
            .iter()
            .filter_map(|o| meta_str(o, "name").map(str::to_owned))
            .collect()
    }

    #[test]
    fn pages_walk_the_whole_list_once() {
        let all = objs(&["a", "b", "c", "d", "e"]);
        let first = page(all.clone(), None, 2, 7);
        assert_eq!(names(&first), ["a", "b"]);
        assert_eq!(first.remaining, Some(3));
        let token = first
            .continue_token
            .as_deref()
            .map(ContinueToken::decode)
            .and_then(Result::ok);
        assert_eq!(
            token.as_ref().map(|t| (t.rv, t.name.as_str())),
            Some((7, "b"))
        );
        let second = page(all.clone(), token.as_ref(), 2, 7);
        assert_eq!(names(&second), ["c", "d"]);
        let last_token = second
            .continue_token
            .as_deref()
            .map(ContinueToken::decode)
            .and_then(Result::ok);
        let last = page(all, last_token.as_ref(), 2, 7);
        assert_eq!(names(&last), ["e"]);
        assert_eq!((last.continue_token, last.remaining), (None, None));
    }

    #[test]
    fn no_limit_is_one_page_and_bad_tokens_are_refused() {
        assert_eq!(page(objs(&["a", "b"]), None, 0, 1).items.len(), 2);
        for bad in ["zz", "abc", "7b7d", ""] {
            assert!(ContinueToken::decode(bad).is_err(), "{bad}");
        }
    }
}
