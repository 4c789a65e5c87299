//! RBAC with upstream's semantics: the rules a user holds come from the ClusterRoleBindings and (in a
//! namespace) the RoleBindings naming them; a request is allowed when one rule matches its verb, group,
//! resource/subresource and name, or its non-resource path. Also the `covers` check behind escalation
//! prevention (a user may only grant what they hold).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Attributes;
use crate::auth::UserInfo;
use crate::informer::Informer;

/// One `rbac.authorization.k8s.io/v1` PolicyRule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyRule {
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs", skip_serializing_if = "Vec::is_empty")]
    pub non_resource_urls: Vec<String>,
}

/// A Role's or ClusterRole's rules.
#[derive(Debug, Clone, Default)]
pub struct Role {
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoleRef {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Subject {
    pub kind: String,
    pub name: String,
    pub namespace: String,
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub name: String,
    /// Empty for a ClusterRoleBinding.
    pub namespace: String,
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

pub fn role_from(v: &Value) -> Option<Role> {
    let rules = match v.get("rules") {
        Some(Value::Array(_)) => serde_json::from_value(v["rules"].clone()).ok()?,
        _ => Vec::new(),
    };
    Some(Role { rules })
}

pub fn binding_from(v: &Value) -> Option<Binding> {
    Some(Binding {
        name: v["metadata"]["name"].as_str()?.to_string(),
        namespace: v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        role_ref: serde_json::from_value(v["roleRef"].clone()).ok()?,
        subjects: match v.get("subjects") {
            Some(Value::Array(_)) => serde_json::from_value(v["subjects"].clone()).ok()?,
            _ => Vec::new(),
        },
    })
}

/// Upstream's `appliesToUser`.
fn applies_to(user: &UserInfo, subject: &Subject, binding_ns: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            let ns = if subject.namespace.is_empty() {
                binding_ns
            } else {
                &subject.namespace
            };
            !ns.is_empty() && user.name == crate::auth::serviceaccount::username(ns, &subject.name)
        }
        _ => false,
    }
}

/// The four RBAC kinds, kept current from the watch cache.
#[derive(Debug)]
pub struct RbacCache {
    pub roles: Arc<Informer<Role>>,
    pub cluster_roles: Arc<Informer<Role>>,
    pub role_bindings: Arc<Informer<Binding>>,
    pub cluster_role_bindings: Arc<Informer<Binding>>,
}

impl Default for RbacCache {
    fn default() -> Self {
        Self {
            roles: Arc::new(Informer::new("/registry/roles", role_from)),
            cluster_roles: Arc::new(Informer::new("/registry/clusterroles", role_from)),
            role_bindings: Arc::new(Informer::new("/registry/rolebindings", binding_from)),
            cluster_role_bindings: Arc::new(Informer::new(
                "/registry/clusterrolebindings",
                binding_from,
            )),
        }
    }
}

impl RbacCache {
    pub fn is_synced(&self) -> bool {
        self.roles.is_synced()
            && self.cluster_roles.is_synced()
            && self.role_bindings.is_synced()
            && self.cluster_role_bindings.is_synced()
    }

    /// The rules a role reference grants, or the error upstream reports for a missing role.
    fn role_rules(&self, role_ref: &RoleRef, namespace: &str) -> Result<Arc<Role>, String> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&format!("/registry/clusterroles/{}", role_ref.name))
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {:?} not found",
                        role_ref.name
                    )
                }),
            "Role" => self
                .roles
                .get(&format!("/registry/roles/{namespace}/{}", role_ref.name))
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io {:?} not found",
                        role_ref.name
                    )
                }),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// Visits every rule `user` holds in `namespace` (cluster-wide ones too) until `visit` returns false;
    /// returns the resolution errors seen (missing roles).
    pub fn visit_rules(
        &self,
        user: &UserInfo,
        namespace: &str,
        mut visit: impl FnMut(&PolicyRule) -> bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        // In no particular order, as upstream: a decision does not depend on it, and clients sort what
        // a rules review lists.
        let bindings: Vec<Arc<Binding>> = self.cluster_role_bindings.list("");
        let namespaced = if namespace.is_empty() {
            Vec::new()
        } else {
            self.role_bindings
                .list(&format!("/registry/rolebindings/{namespace}/"))
        };
        for b in bindings.iter().chain(namespaced.iter()) {
            if !b.subjects.iter().any(|s| applies_to(user, s, &b.namespace)) {
                continue;
            }
            match self.role_rules(&b.role_ref, &b.namespace) {
                Ok(role) => {
                    for rule in &role.rules {
                        if !visit(rule) {
                            return errors;
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }

    /// Every rule `user` holds in `namespace`, with resolution errors.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let mut rules = Vec::new();
        let errors = self.visit_rules(user, namespace, |r| {
            rules.push(r.clone());
            true
        });
        (rules, errors)
    }

    /// Whether some rule allows the request; the reason lists resolution errors, as upstream's.
    pub fn authorize(&self, attrs: &Attributes) -> (bool, String) {
        let mut allowed = false;
        let errors = self.visit_rules(&attrs.user, &attrs.namespace, |rule| {
            allowed = rule_allows(attrs, rule);
            !allowed
        });
        if allowed {
            return (true, String::new());
        }
        let reason = if errors.is_empty() {
            String::new()
        } else {
            format!("RBAC: {}", aggregate(&errors))
        };
        (false, reason)
    }
}

/// Upstream's aggregate error text: one error as is, several as `[a, b]`.
fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Upstream's `RuleAllows`.
pub fn rule_allows(attrs: &Attributes, rule: &PolicyRule) -> bool {
    if !has(&rule.verbs, &attrs.verb) {
        return false;
    }
    if !attrs.resource_request {
        return non_resource_url_matches(rule, &attrs.path);
    }
    has(&rule.api_groups, &attrs.group)
        && resource_matches(rule, &attrs.resource, &attrs.subresource)
        && (rule.resource_names.is_empty() || rule.resource_names.contains(&attrs.name))
}

fn resource_matches(rule: &PolicyRule, resource: &str, subresource: &str) -> bool {
    let combined = if subresource.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}/{subresource}")
    };
    rule.resources.iter().any(|r| {
        r == "*"
            || *r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/").is_some_and(|s| s == subresource))
    })
}

fn non_resource_url_matches(rule: &PolicyRule, path: &str) -> bool {
    rule.non_resource_urls.iter().any(|u| {
        u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
    })
}

/// Upstream's `Covers`: the rules of `servant` that no rule of `owner` covers, broken down to one verb,
/// group, resource and name (or URL) each.
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for rule in servant {
        for sub in breakdown(rule) {
            if !owner.iter().any(|o| rule_covers(o, &sub)) {
                missing.push(sub);
            }
        }
    }
    missing
}

/// One rule per (verb, group, resource, name) and per (verb, URL), as upstream's `BreakdownRule`.
fn breakdown(rule: &PolicyRule) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for group in &rule.api_groups {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                if rule.resource_names.is_empty() {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        ..PolicyRule::default()
                    });
                }
                for name in &rule.resource_names {
                    out.push(PolicyRule {
                        verbs: vec![verb.clone()],
                        api_groups: vec![group.clone()],
                        resources: vec![resource.clone()],
                        resource_names: vec![name.clone()],
                        ..PolicyRule::default()
                    });
                }
            }
        }
    }
    for url in &rule.non_resource_urls {
        for verb in &rule.verbs {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: vec![url.clone()],
                ..PolicyRule::default()
            });
        }
    }
    out
}

/// Upstream's `ruleCovers` for one broken-down rule.
fn rule_covers(owner: &PolicyRule, sub: &PolicyRule) -> bool {
    let all = |list: &[String], want: &[String], f: &dyn Fn(&str, &str) -> bool| {
        want.iter().all(|w| list.iter().any(|o| f(o, w)))
    };
    let exact_or_star = |o: &str, w: &str| o == "*" || o == w;
    let resource = |o: &str, w: &str| {
        o == "*"
            || o == w
            || o.strip_prefix("*/")
                .is_some_and(|s| w.split_once('/').is_some_and(|(_, ws)| ws == s))
    };
    let url = |o: &str, w: &str| {
        o == "*" || o == w || o.strip_suffix('*').is_some_and(|p| w.starts_with(p))
    };
    all(&owner.verbs, &sub.verbs, &exact_or_star)
        && all(&owner.api_groups, &sub.api_groups, &exact_or_star)
        && all(&owner.resources, &sub.resources, &resource)
        && all(&owner.non_resource_urls, &sub.non_resource_urls, &url)
        && (owner.resource_names.is_empty()
            || (!sub.resource_names.is_empty()
                && all(&owner.resource_names, &sub.resource_names, &|o, w| o == w)))
}

/// Upstream's `CompactString` of a rule: `{APIGroups:[""], Resources:["pods"], Verbs:["get"]}`.
pub fn compact_string(rule: &PolicyRule) -> String {
    let q = |list: &[String]| {
        let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", items.join(" "))
    };
    let mut parts = Vec::new();
    for (name, list) in [
        ("APIGroups", &rule.api_groups),
        ("Resources", &rule.resources),
        ("NonResourceURLs", &rule.non_resource_urls),
        ("ResourceNames", &rule.resource_names),
        ("Verbs", &rule.verbs),
    ] {
        if !list.is_empty() {
            parts.push(format!("{name}:{}", q(list)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PolicyRule {
            verbs: v(verbs),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: v(names),
            non_resource_urls: Vec::new(),
        }
    }

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            user: UserInfo::default(),
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: "ns".into(),
            name: name.into(),
            path: String::new(),
        }
    }

    #[test]
    fn rules_match_as_upstream() {
        let r = rule(&["get"], &[""], &["pods"], &[]);
        assert!(rule_allows(&attrs("get", "", "pods", "", "p"), &r));
        assert!(!rule_allows(&attrs("get", "", "pods", "log", "p"), &r));
        assert!(!rule_allows(&attrs("list", "", "pods", "", ""), &r));
        let sub = rule(&["get"], &[""], &["*/log"], &[]);
        assert!(rule_allows(&attrs("get", "", "pods", "log", "p"), &sub));
        let named = rule(&["get"], &[""], &["secrets"], &["a"]);
        assert!(rule_allows(&attrs("get", "", "secrets", "", "a"), &named));
        assert!(!rule_allows(&attrs("get", "", "secrets", "", "b"), &named));
        assert!(!rule_allows(&attrs("list", "", "secrets", "", ""), &named));
        let mut url = attrs("get", "", "", "", "");
        url.resource_request = false;
        url.path = "/healthz/etcd".into();
        let u = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz/*".into()],
            ..PolicyRule::default()
        };
        assert!(rule_allows(&url, &u));
    }

    #[test]
    fn covers_reports_what_is_missing() {
        let owner = vec![rule(&["get", "list"], &[""], &["pods", "*/status"], &[])];
        assert!(uncovered(&owner, &[rule(&["get"], &[""], &["pods"], &[])]).is_empty());
        assert!(
            uncovered(
                &owner,
                &[rule(&["get"], &[""], &["deployments/status"], &[])]
            )
            .is_empty()
        );
        let missing = uncovered(
            &owner,
            &[rule(
                &["get", "delete"],
                &[""],
                &["pods", "secrets"],
                &["x"],
            )],
        );
        let text: Vec<String> = missing.iter().map(compact_string).collect();
        assert_eq!(
            text,
            vec![
                r#"{APIGroups:[""], Resources:["pods"], ResourceNames:["x"], Verbs:["delete"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["x"], Verbs:["get"]}"#,
                r#"{APIGroups:[""], Resources:["secrets"], ResourceNames:["x"], Verbs:["delete"]}"#,
            ]
        );
        let named = vec![rule(&["get"], &[""], &["pods"], &["a"])];
        assert_eq!(
            uncovered(&named, &[rule(&["get"], &[""], &["pods"], &[])]).len(),
            1
        );
        let star = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(
            uncovered(
                &star,
                &[rule(
                    &["escalate"],
                    &["rbac.authorization.k8s.io"],
                    &["roles"],
                    &[]
                )]
            )
            .is_empty()
        );
    }
}
