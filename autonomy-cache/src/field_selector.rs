//! Kubernetes field selectors (`spec.nodeName=n1,status.phase!=Failed`), matched
//! against any simple dotted path of the cached object.

use std::fmt;

use serde_json::Value;

use super::error::SelectorError;

/// One `path=value` / `path!=value` term.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Term {
    path: String,
    equals: bool,
    value: String,
}

/// A parsed field selector: every term must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<Term>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query value (`\` escapes `,`, `=`, `!` and `\`).
    pub fn parse(selector: &str) -> Result<FieldSelector, SelectorError> {
        let error = |reason: String| SelectorError {
            kind: "field",
            selector: selector.to_string(),
            reason,
        };
        let mut terms = Vec::new();
        for part in split_unescaped(selector, ',') {
            if part.trim().is_empty() {
                if selector.trim().is_empty() {
                    continue;
                }
                return Err(error("empty term".into()));
            }
            terms.push(parse_term(&part).map_err(error)?);
        }
        terms.sort();
        terms.dedup();
        Ok(FieldSelector { terms })
    }

    /// Whether `object` satisfies every term; a missing or null field reads as "".
    pub fn matches(&self, object: &Value) -> bool {
        self.matches_with(|path| field_value(object, path))
    }

    /// Like [`matches`](Self::matches) with the field lookup supplied (the cache reads
    /// fields straight from stored JSON text): `lookup(path)` gives the leaf as a string,
    /// "" when missing or null, `None` for objects and arrays.
    pub(crate) fn matches_with(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|term| {
            let actual = lookup(&term.path);
            (actual.as_deref() == Some(term.value.as_str())) == term.equals
        })
    }

    /// The value this selector requires `path` to equal, if it has such a term.
    pub fn required(&self, path: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.equals && t.path == path)
            .map(|t| t.value.as_str())
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Canonical form (terms sorted, special characters escaped).
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            let op = if term.equals { "=" } else { "!=" };
            let sep = if i > 0 { "," } else { "" };
            write!(f, "{sep}{}{op}{}", escape(&term.path), escape(&term.value))?;
        }
        Ok(())
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The string form of a string/number/bool leaf at a dotted path; "" when missing or
/// null; `None` for objects and arrays (they equal nothing).
fn field_value(object: &Value, path: &str) -> Option<String> {
    let mut node = object;
    for key in path.split('.') {
        match node.get(key) {
            Some(next) => node = next,
            None => return Some(String::new()),
        }
    }
    leaf_string(node)
}

/// A leaf as a field selector compares it.
pub(crate) fn leaf_string(node: &Value) -> Option<String> {
    match node {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Splits at unescaped `sep`, keeping escapes for the next stage.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push('\\');
                current.extend(chars.next());
            }
            c if c == sep => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

fn parse_term(term: &str) -> Result<Term, String> {
    let mut path = String::new();
    let mut chars = term.chars().peekable();
    let mut op = None;
    while let Some(c) = chars.next() {
        match c {
            '\\' => path.extend(chars.next()),
            '!' if chars.peek() == Some(&'=') => {
                chars.next();
                op = Some(false);
                break;
            }
            '=' => {
                if chars.peek() == Some(&'=') {
                    chars.next();
                }
                op = Some(true);
                break;
            }
            c => path.push(c),
        }
    }
    let equals = op.ok_or_else(|| format!("{term:?} has no =, == or != operator"))?;
    let mut value = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.extend(chars.next()),
            '=' | '!' => return Err(format!("{term:?} has an unescaped {c:?} in its value")),
            c => value.push(c),
        }
    }
    let path = path.trim().to_string();
    let valid_path = !path.is_empty()
        && path.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        });
    if !valid_path {
        return Err(format!("invalid field path {path:?}"));
    }
    Ok(Term {
        path,
        equals,
        value: value.trim().to_string(),
    })
}

#[cfg(test)]
#[path = "selector_tests.rs"]
mod tests;
