//! Label and field selectors, parsed and evaluated here (never borrowed from the code under
//! test: this is the oracle the node proxy's own selector code is checked against).
//!
//! Grammar as in k8s.io/apimachinery: labels take `k`, `!k`, `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`; fields take `path=v`, `path==v`, `path!=v`
//! with `\,` `\=` `\\` escapes, over any dotted path (missing fields read as "").

use serde_json::Value;

/// Why a selector string was refused (answered as a 400 `BadRequest` Status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A requirement without a key (`=x`).
    #[error("unable to parse requirement: {0:?}: found no key")]
    MissingKey(String),
    /// A key with characters labels cannot have.
    #[error("unable to parse requirement: invalid label key {0:?}")]
    InvalidKey(String),
    /// A value with characters labels cannot have.
    #[error("unable to parse requirement: invalid label value {0:?}")]
    InvalidValue(String),
    /// `in`/`notin` without `( ... )`.
    #[error("unable to parse requirement: {0:?}: expected a parenthesised set of values")]
    BadSet(String),
    /// Something other than the known operators after the key.
    #[error("unable to parse requirement: {0:?}: unknown operator")]
    UnknownOperator(String),
    /// `>`/`<` with a non-integer.
    #[error("unable to parse requirement: {0:?}: value of > or < must be an integer")]
    NotAnInteger(String),
    /// A field term without `=`, `==` or `!=`.
    #[error("invalid selector: {0:?}; can't understand {1:?}")]
    BadField(String, String),
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector`: every requirement must hold (empty selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let reqs = split_top_level(text)
            .into_iter()
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_label_req)
            .collect::<Result<_, _>>()?;
        Ok(Self { reqs })
    }

    /// Whether an object with these `metadata.labels` is selected.
    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|req| match req {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelReq::NotIn(k, set) => !get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelReq::Gt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            LabelReq::Lt(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_req(part: &str) -> Result<LabelReq, SelectorError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(LabelReq::NotExists(valid_key(key.trim())?));
    }
    let key_end = part
        .find(|c: char| c.is_whitespace() || "=!<>(".contains(c))
        .unwrap_or(part.len());
    let key = &part[..key_end];
    if key.is_empty() {
        return Err(SelectorError::MissingKey(part.into()));
    }
    let key = valid_key(key)?;
    let rest = part[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(LabelReq::Exists(key));
    }
    if let Some(v) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        return Ok(LabelReq::Eq(key, valid_value(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix("!=") {
        return Ok(LabelReq::NotEq(key, valid_value(v.trim())?));
    }
    if let Some(v) = rest.strip_prefix('>') {
        return Ok(LabelReq::Gt(key, integer(part, v)?));
    }
    if let Some(v) = rest.strip_prefix('<') {
        return Ok(LabelReq::Lt(key, integer(part, v)?));
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(LabelReq::NotIn(key, parse_set(part, set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(LabelReq::In(key, parse_set(part, set)?));
    }
    Err(SelectorError::UnknownOperator(part.into()))
}

fn integer(part: &str, v: &str) -> Result<i64, SelectorError> {
    v.trim()
        .parse()
        .map_err(|_| SelectorError::NotAnInteger(part.into()))
}

fn parse_set(part: &str, set: &str) -> Result<Vec<String>, SelectorError> {
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| SelectorError::BadSet(part.into()))?;
    inner.split(',').map(|v| valid_value(v.trim())).collect()
}

/// Label keys: optional DNS prefix and `/`, then up to 63 of `[A-Za-z0-9-_.]`.
fn valid_key(key: &str) -> Result<String, SelectorError> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let ok = !name.is_empty()
        && name.len() <= 63
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(key.to_owned())
    } else {
        Err(SelectorError::InvalidKey(key.into()))
    }
}

/// Label values: empty, or up to 63 of `[A-Za-z0-9-_.]`.
fn valid_value(v: &str) -> Result<String, SelectorError> {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(SelectorError::InvalidValue(v.into()))
    }
}

/// One field requirement: `path` equals (or not) `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldReq {
    path: String,
    value: String,
    negated: bool,
}

/// A parsed `fieldSelector`: every requirement must hold (empty selects everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    reqs: Vec<FieldReq>,
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for term in split_unescaped(text, ',') {
            if term.trim().is_empty() {
                continue;
            }
            let (path, negated, raw) = split_field_term(&term)
                .ok_or_else(|| SelectorError::BadField(text.into(), term.clone()))?;
            reqs.push(FieldReq {
                path: path.trim().to_owned(),
                value: unescape(raw),
                negated,
            });
        }
        Ok(Self { reqs })
    }

    /// Whether `obj` is selected; a missing or null field reads as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs
            .iter()
            .all(|req| (field_value(obj, &req.path) == req.value) != req.negated)
    }

    /// The name a `metadata.name=<x>` requirement pins, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.reqs
            .iter()
            .find(|r| r.path == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }
}

/// Splits `term` at its first unescaped `!=`, `==` or `=`: (path, negated, raw value).
fn split_field_term(term: &str) -> Option<(&str, bool, &str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], true, &term[i + 2..]))
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], false, &term[i + 2..]))
            }
            b'=' => return Some((&term[..i], false, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

/// Splits on `sep` not preceded by a backslash escape; escapes are kept for [`unescape`].
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let current = parts.last_mut();
        match (c, current) {
            ('\\', Some(cur)) => {
                cur.push('\\');
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            (c, Some(_)) if c == sep => parts.push(String::new()),
            (c, Some(cur)) => cur.push(c),
            (_, None) => {}
        }
    }
    parts
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The string form of the field at a dotted path ("" when absent or null).
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(next) => cur = next,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn sel(text: &str, l: Value) -> bool {
        let s = LabelSelector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        s.matches(Some(&labels(l)))
    }

    #[test]
    fn label_operators() {
        let l = json!({"app": "web", "tier": "front", "n": "5"});
        assert!(sel("", l.clone()));
        assert!(sel("app=web", l.clone()));
        assert!(sel("app==web", l.clone()));
        assert!(!sel("app=db", l.clone()));
        assert!(sel("app!=db", l.clone()));
        assert!(sel("missing!=x", l.clone()));
        assert!(sel("app in (db, web)", l.clone()));
        assert!(!sel("app notin (db,web)", l.clone()));
        assert!(sel("missing notin (a)", l.clone()));
        assert!(sel("tier", l.clone()));
        assert!(!sel("!tier", l.clone()));
        assert!(sel("!missing", l.clone()));
        assert!(sel("app=web,tier in (front),!missing", l.clone()));
        assert!(!sel("app=web,tier=back", l.clone()));
        assert!(sel("n>4", l.clone()) && !sel("n<5", l.clone()));
        assert!(sel("example.com/role!=x", l));
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for bad in ["=x", "app in a,b", "a b", "app=bad value", "a?=b", "n>x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "edge-1"}, "status": {"phase": "Running"}});
        let f = |t: &str| {
            FieldSelector::parse(t)
                .map(|s| s.matches(&pod))
                .unwrap_or(false)
        };
        assert!(f("spec.nodeName=edge-1"));
        assert!(f("spec.nodeName==edge-1,status.phase!=Failed"));
        assert!(!f("spec.nodeName=edge-2"));
        assert!(f("metadata.namespace=ns,metadata.name=p"));
        assert!(f("spec.schedulerName="), "a missing field reads as empty");
        assert!(!f("spec.nodeName="));
        assert_eq!(
            FieldSelector::parse("metadata.name=a\\,b")
                .ok()
                .and_then(|s| s.pinned_name().map(str::to_owned)),
            Some("a,b".to_owned())
        );
        assert!(FieldSelector::parse("spec.nodeName").is_err());
    }
}
