//! `/agents` filtering and paging (pure): `?node=NAME` picks one node,
//! `?limit=N` pages through the fleet in node-name order with a Kubernetes
//! style `continue` token, so a 10,000-node listing need not be one answer.
//!
//! Without `limit` the answer stays the plain JSON array of the spec; with
//! it, an object `{"items": [...], "continue": "..."}` whose `continue` is
//! empty on the last page (pass it back as `?continue=` for the next one).

use serde::Serialize;

use crate::registry::AgentInfo;

/// Largest page `?limit=` may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// What a `/agents` query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AgentsQuery {
    pub node: Option<String>,
    pub limit: Option<usize>,
    /// The last node name of the previous page.
    pub after: Option<String>,
}

/// A page of agents (`?limit=` given).
#[derive(Debug, Serialize)]
pub struct AgentsPage<'a> {
    pub items: &'a [AgentInfo],
    #[serde(rename = "continue")]
    pub continue_token: String,
}

/// Parses the query string; the error names the bad parameter.
pub fn parse(query: Option<&str>) -> Result<AgentsQuery, String> {
    let mut q = AgentsQuery::default();
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        if kv.is_empty() {
            continue;
        }
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        match key {
            "node" => q.node = Some(value.to_string()),
            "limit" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("limit={value:?} is not a number"))?;
                if n == 0 || n > MAX_LIMIT {
                    return Err(format!("limit={n} is outside 1..={MAX_LIMIT}"));
                }
                q.limit = Some(n);
            }
            "continue" => q.after = Some(value.to_string()).filter(|v| !v.is_empty()),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; /agents takes node, limit, continue"
                ))
            }
        }
    }
    if q.after.is_some() && q.limit.is_none() {
        return Err("continue needs limit".into());
    }
    Ok(q)
}

/// The rows a query selects from `agents` (sorted by node name), and the
/// continue token if a page was asked for.
pub fn select<'a>(agents: &'a [AgentInfo], q: &AgentsQuery) -> (&'a [AgentInfo], Option<String>) {
    let mut rows = agents;
    if let Some(node) = &q.node {
        rows = match rows.binary_search_by(|a| a.node.as_str().cmp(node)) {
            Ok(i) => &rows[i..=i],
            Err(_) => &[],
        };
    }
    let Some(limit) = q.limit else {
        return (rows, None);
    };
    if let Some(after) = &q.after {
        let start = rows.partition_point(|a| a.node.as_str() <= after.as_str());
        rows = &rows[start..];
    }
    if rows.len() > limit {
        let page = &rows[..limit];
        let token = page.last().map(|a| a.node.clone()).unwrap_or_default();
        (page, Some(token))
    } else {
        (rows, Some(String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(n: usize) -> Vec<AgentInfo> {
        (0..n)
            .map(|i| AgentInfo::for_tests(&format!("edge-{i:03}"), &[]))
            .collect()
    }

    fn names(rows: &[AgentInfo]) -> Vec<&str> {
        rows.iter().map(|a| a.node.as_str()).collect()
    }

    #[test]
    fn no_query_is_the_whole_list() {
        let all = fleet(3);
        let q = parse(None).unwrap();
        assert_eq!(select(&all, &q), (&all[..], None));
    }

    #[test]
    fn node_picks_one_or_none() {
        let all = fleet(5);
        let q = parse(Some("node=edge-003")).unwrap();
        assert_eq!(names(select(&all, &q).0), ["edge-003"]);
        let q = parse(Some("node=edge-9")).unwrap();
        assert!(select(&all, &q).0.is_empty());
    }

    #[test]
    fn pages_cover_the_fleet_once_in_order() {
        let all = fleet(25);
        let mut seen = Vec::new();
        let mut token = String::new();
        for _ in 0..10 {
            let q = parse(Some(&format!("limit=10&continue={token}"))).unwrap();
            let (rows, next) = select(&all, &q);
            seen.extend(names(rows));
            token = next.unwrap();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(seen, names(&all));
    }

    #[test]
    fn a_node_that_left_between_pages_does_not_break_the_walk() {
        let mut all = fleet(6);
        let q = parse(Some("limit=3")).unwrap();
        let (_, token) = select(&all, &q);
        let token = token.unwrap();
        all.retain(|a| a.node != token);
        let q = parse(Some(&format!("limit=3&continue={token}"))).unwrap();
        assert_eq!(
            names(select(&all, &q).0),
            ["edge-003", "edge-004", "edge-005"]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, needle) in [
            ("limit=0", "limit=0"),
            ("limit=x", "limit=\"x\""),
            ("limit=10001", "outside"),
            ("continue=edge-1", "continue needs limit"),
            ("nodes=a", "unknown parameter \"nodes\""),
        ] {
            let e = parse(Some(query)).unwrap_err();
            assert!(e.contains(needle), "{query}: {e}");
        }
    }
}
