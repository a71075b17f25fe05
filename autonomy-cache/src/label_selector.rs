//! Kubernetes label selectors (`a=b`, `a!=b`, `a in (x,y)`, `!a`...), parsed and matched
//! offline so that a list with any selector is answered from the cached objects.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

use super::error::SelectorError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed label selector: all requirements must hold (comma means AND).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the `labelSelector` query value; an empty string selects everything.
    pub fn parse(selector: &str) -> Result<LabelSelector, SelectorError> {
        let error = |reason: String| SelectorError {
            kind: "label",
            selector: selector.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(selector).map_err(&error)? {
            let part = part.trim();
            if part.is_empty() {
                if selector.trim().is_empty() {
                    continue;
                }
                return Err(error("empty requirement".into()));
            }
            requirements.push(parse_requirement(part).map_err(&error)?);
        }
        requirements.sort();
        requirements.dedup();
        Ok(LabelSelector { requirements })
    }

    /// Whether an object's `metadata.labels` (absent = no labels) satisfy every requirement.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let empty = Map::new();
        let labels = labels.unwrap_or(&empty);
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.requirements.iter().all(|req| match req {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
            Requirement::GreaterThan(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::LessThan(k, n) => get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// Canonical form: requirements sorted, so equal selectors key the same cache set.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
        for (i, req) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match req {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, set) => write!(f, "{k} in ({})", join(set))?,
                Requirement::NotIn(k, set) => write!(f, "{k} notin ({})", join(set))?,
                Requirement::GreaterThan(k, n) => write!(f, "{k}>{n}")?,
                Requirement::LessThan(k, n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(selector: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parenthesis".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("unbalanced ')'".into()),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("missing ')'".into());
    }
    parts.push(&selector[start..]);
    Ok(parts)
}

/// Builds a key/value requirement.
type MakeRequirement = fn(String, String) -> Requirement;

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(valid_key(key.trim())?));
    }
    let key_end = part.find(|c: char| !is_key_char(c)).unwrap_or(part.len());
    let key = valid_key(&part[..key_end])?;
    let rest = part[key_end..].trim_start();
    if rest.is_empty() {
        return Ok(Requirement::Exists(key));
    }
    let operators: [(&str, MakeRequirement); 3] = [
        ("!=", Requirement::NotEquals),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ];
    for (op, make) in operators {
        if let Some(value) = rest.strip_prefix(op) {
            return Ok(make(key, valid_value(value.trim())?));
        }
    }
    for (op, greater) in [(">", true), ("<", false)] {
        if let Some(value) = rest.strip_prefix(op) {
            let n = value
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("{op} needs an integer, got {:?}", value.trim()))?;
            return Ok(if greater {
                Requirement::GreaterThan(key, n)
            } else {
                Requirement::LessThan(key, n)
            });
        }
    }
    if let Some(set) = rest.strip_prefix("notin") {
        return Ok(Requirement::NotIn(key, parse_set(set)?));
    }
    if let Some(set) = rest.strip_prefix("in") {
        return Ok(Requirement::In(key, parse_set(set)?));
    }
    Err(format!("unknown operator in {part:?}"))
}

fn parse_set(set: &str) -> Result<BTreeSet<String>, String> {
    let set = set.trim();
    let inner = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised set, got {set:?}"))?;
    let values: BTreeSet<String> = inner
        .split(',')
        .map(|v| valid_value(v.trim()))
        .collect::<Result<_, _>>()?;
    if inner.trim().is_empty() {
        return Err("empty value set".into());
    }
    Ok(values)
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn valid_key(key: &str) -> Result<String, String> {
    if key.is_empty() || key.len() > 316 || !key.chars().all(is_key_char) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_string())
}

fn valid_value(value: &str) -> Result<String, String> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if value.len() > 63 || !ok_chars {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(value.to_string())
}
