//! Which clients are cached, by User-Agent ("component"), from `--hub-components`.

use std::collections::BTreeSet;
use std::str::FromStr;

use super::error::ComponentRuleError;

/// The set of components whose responses are cached: parsed from `--hub-components`
/// ("kubelet,kube-proxy" or "*"), matched against request User-Agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRule {
    /// `*`: every client that sends a User-Agent.
    All,
    /// Only these lowercased component names.
    Named(BTreeSet<String>),
}

impl ComponentRule {
    /// The component of `user_agent` (lowercased, cut at the first `/`) when the rule
    /// caches it; `None` means "do not cache" (no User-Agent, or not listed).
    pub fn component(&self, user_agent: Option<&str>) -> Option<String> {
        let name = component_name(user_agent?)?;
        match self {
            ComponentRule::All => Some(name),
            ComponentRule::Named(names) => names.contains(&name).then_some(name),
        }
    }
}

/// `kubelet/v1.30.0 (linux/amd64)` → `kubelet`; `None` for an empty product.
fn component_name(user_agent: &str) -> Option<String> {
    let product = user_agent.split('/').next().unwrap_or_default().trim();
    (!product.is_empty()).then(|| product.to_ascii_lowercase())
}

impl Default for ComponentRule {
    /// The spec's default: kubelet, kube-proxy, coredns, flanneld.
    fn default() -> Self {
        let names = ["kubelet", "kube-proxy", "coredns", "flanneld"];
        ComponentRule::Named(names.iter().map(|n| n.to_string()).collect())
    }
}

impl FromStr for ComponentRule {
    type Err = ComponentRuleError;

    /// Comma-separated names or `*`; an empty string caches nothing.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut names = BTreeSet::new();
        if list.trim().is_empty() {
            return Ok(ComponentRule::Named(names));
        }
        for raw in list.split(',') {
            let name = raw.trim();
            if name == "*" {
                return Ok(ComponentRule::All);
            }
            if name.is_empty() {
                return Err(ComponentRuleError::EmptyName {
                    list: list.to_string(),
                });
            }
            let valid = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(ComponentRuleError::BadName {
                    name: name.to_string(),
                });
            }
            names.insert(name.to_ascii_lowercase());
        }
        Ok(ComponentRule::Named(names))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_is_lowercased_and_cut_at_first_slash() {
        let rule: ComponentRule = "kubelet,kube-proxy".parse().unwrap();
        assert_eq!(
            rule.component(Some("Kubelet/v1.30.0 (linux/amd64) kubernetes/abc")),
            Some("kubelet".to_string())
        );
        assert_eq!(
            rule.component(Some("kube-proxy/v1.30")),
            Some("kube-proxy".into())
        );
        assert_eq!(rule.component(Some("coredns/1.11")), None);
        assert_eq!(rule.component(None), None);
        assert_eq!(rule.component(Some("/v1")), None);
    }

    #[test]
    fn star_caches_every_named_client() {
        let rule: ComponentRule = "kubelet, *".parse().unwrap();
        assert_eq!(rule, ComponentRule::All);
        assert_eq!(
            rule.component(Some("my-operator/0.1")),
            Some("my-operator".into())
        );
        assert_eq!(rule.component(Some("")), None);
        assert_eq!(rule.component(None), None);
    }

    #[test]
    fn names_are_trimmed_and_lowercased() {
        let rule: ComponentRule = " KubeLet , flanneld ".parse().unwrap();
        assert_eq!(rule.component(Some("kubelet")), Some("kubelet".into()));
        assert_eq!(
            rule.component(Some("FLANNELD/0.25")),
            Some("flanneld".into())
        );
    }

    #[test]
    fn default_matches_the_spec() {
        let rule = ComponentRule::default();
        for ua in ["kubelet/1", "kube-proxy/1", "coredns/1", "flanneld/1"] {
            assert!(rule.component(Some(ua)).is_some(), "{ua}");
        }
        assert_eq!(rule.component(Some("kubectl/1.30")), None);
    }

    #[test]
    fn bad_lists_are_refused_precisely() {
        assert_eq!(
            "kubelet,,x".parse::<ComponentRule>(),
            Err(ComponentRuleError::EmptyName {
                list: "kubelet,,x".into()
            })
        );
        assert_eq!(
            "kubelet/v1".parse::<ComponentRule>(),
            Err(ComponentRuleError::BadName {
                name: "kubelet/v1".into()
            })
        );
        assert_eq!(
            "".parse::<ComponentRule>(),
            Ok(ComponentRule::Named(BTreeSet::new()))
        );
    }
}
