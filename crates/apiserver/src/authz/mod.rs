//! Authorization, as kube-apiserver's `--authorization-mode=Node,RBAC`: members of `system:masters` may do
//! anything; then the node authorizer (kubelets); then RBAC. Denials answer upstream's 403 message. Also
//! RBAC's escalation prevention for writes of roles and bindings, and the bootstrap policy.

pub mod impersonation;
pub mod node;
pub mod policy;
pub mod rbac;

use serde_json::Value;

use crate::api::Api;
use crate::auth::{MASTERS, UserInfo};
use crate::request::RequestInfo;
use crate::status::ApiError;
use rbac::PolicyRule;

/// What a request asks to do (upstream's `authorizer.Attributes`).
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    pub user: UserInfo,
    pub verb: String,
    pub resource_request: bool,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The request path (non-resource requests).
    pub path: String,
}

impl Attributes {
    pub fn resource(user: &UserInfo, info: &RequestInfo) -> Self {
        // A namespace is authorized within itself (upstream's RequestInfo), so a RoleBinding in `foo`
        // can grant reading namespace `foo`.
        let namespace = match (&info.namespace, info.group.as_str(), info.resource.as_str()) {
            (None, "", "namespaces") => info.name.clone().unwrap_or_default(),
            (ns, _, _) => ns.clone().unwrap_or_default(),
        };
        Self {
            user: user.clone(),
            verb: info.verb.to_string(),
            resource_request: true,
            group: info.group.clone(),
            version: info.version.clone(),
            resource: info.resource.clone(),
            subresource: info.subresource.clone().unwrap_or_default(),
            namespace,
            name: info.name.clone().unwrap_or_default(),
            path: String::new(),
        }
    }

    pub fn non_resource(user: &UserInfo, method: &hyper::Method, path: &str) -> Self {
        Self {
            user: user.clone(),
            verb: method.as_str().to_ascii_lowercase(),
            resource_request: false,
            path: path.to_string(),
            ..Self::default()
        }
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied (no authorizer allowed it); the reason joins what the authorizers said.
    Deny(String),
}

/// Decides whether `attrs` is allowed.
pub fn authorize(api: &Api, attrs: &Attributes) -> Decision {
    if attrs.user.in_group(MASTERS) {
        return Decision::Allow;
    }
    let mut reasons = Vec::new();
    match node::authorize(api, attrs) {
        node::Verdict::Allow => return Decision::Allow,
        node::Verdict::Deny(reason) => return Decision::Deny(reason),
        node::Verdict::NoOpinion(reason) => {
            if !reason.is_empty() {
                reasons.push(reason);
            }
        }
    }
    let (allowed, reason) = api.rbac.authorize(attrs);
    if allowed {
        return Decision::Allow;
    }
    if !reason.is_empty() {
        reasons.push(reason);
    }
    Decision::Deny(reasons.join("\n"))
}

/// Upstream's 403 for a denied request.
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let user = &attrs.user.name;
    let mut message = if !attrs.resource_request {
        format!("User {user:?} cannot {} path {:?}", attrs.verb, attrs.path)
    } else {
        let resource = if attrs.subresource.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        if attrs.namespace.is_empty() {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
                attrs.verb, attrs.group
            )
        } else {
            format!(
                "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
                attrs.verb, attrs.group, attrs.namespace
            )
        }
    };
    if !reason.is_empty() {
        message = format!("{message}: {reason}");
    }
    if !attrs.resource_request {
        return ApiError::forbidden_plain(format!("forbidden: {message}"));
    }
    ApiError::forbidden(&attrs.resource, &attrs.group, &attrs.name, &message)
}

/// Checks a request, answering 403 when it is not allowed.
pub fn check(api: &Api, attrs: &Attributes) -> Result<(), ApiError> {
    match authorize(api, attrs) {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(forbidden(attrs, &reason)),
    }
}

/// Go's `%q` of a string slice: `["a" "b"]`.
fn go_quoted(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", items.join(" "))
}

/// RBAC's escalation check for a Role/ClusterRole write (`rules`, in `namespace`) or a binding's role
/// (`bind`: the binding's role reference, whose rules are granted). Allowed when the user holds every rule,
/// or has `escalate` on the role kind (`bind` on the referenced role for bindings); else upstream's 403.
pub fn confirm_no_escalation(
    api: &Api,
    user: &UserInfo,
    plural: &str,
    name: &str,
    namespace: &str,
    obj: &Value,
    had_aggregation: bool,
) -> Result<(), ApiError> {
    if user.in_group(MASTERS) {
        return Ok(());
    }
    let group = "rbac.authorization.k8s.io";
    let permitted = |verb: &str, resource: &str, res_name: &str| {
        let attrs = Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: res_name.into(),
            ..Attributes::default()
        };
        authorize(api, &attrs) == Decision::Allow
    };
    let decode = |v: &Value| -> Result<Vec<PolicyRule>, ApiError> {
        if v.is_null() {
            return Ok(Vec::new());
        }
        serde_json::from_value(v.clone())
            .map_err(|e| ApiError::bad_request(format!("decoding rules: {e}")))
    };
    let mut rules: Vec<PolicyRule> = match plural {
        "roles" | "clusterroles" => {
            if permitted("escalate", plural, "") {
                return Ok(());
            }
            decode(&obj["rules"])?
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = &obj["roleRef"];
            let (kind, role_name) = (
                role_ref["kind"].as_str().unwrap_or(""),
                role_ref["name"].as_str().unwrap_or(""),
            );
            let role_plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if permitted("bind", role_plural, role_name) {
                return Ok(());
            }
            let key = if kind == "Role" {
                format!("/registry/roles/{namespace}/{role_name}")
            } else {
                format!("/registry/clusterroles/{role_name}")
            };
            let informer = if kind == "Role" {
                &api.rbac.roles
            } else {
                &api.rbac.cluster_roles
            };
            match informer.get(&key) {
                Some(role) => role.rules.clone(),
                None => {
                    let what = if kind == "Role" {
                        "role"
                    } else {
                        "clusterrole"
                    };
                    return Err(ApiError::not_found(&format!("{what}s"), group, role_name));
                }
            }
        }
        _ => return Ok(()),
    };
    if plural == "clusterroles"
        && (obj.get("aggregationRule").is_some_and(|a| !a.is_null()) || had_aggregation)
    {
        // An aggregation rule can gather anything: setting (or changing a role that had) one takes full
        // authority, as upstream.
        rules.push(PolicyRule {
            verbs: vec!["*".into()],
            api_groups: vec!["*".into()],
            resources: vec!["*".into()],
            ..PolicyRule::default()
        });
        rules.push(PolicyRule {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
            ..PolicyRule::default()
        });
        let (owned, _) = api.rbac.rules_for(user, namespace);
        if !rbac::uncovered(&owned, &rules).is_empty() {
            return Err(ApiError::forbidden(
                plural,
                group,
                name,
                "must have cluster-admin privileges to use an aggregationRule",
            ));
        }
        return Ok(());
    }
    let (owned, errors) = api.rbac.rules_for(user, namespace);
    let missing = rbac::uncovered(&owned, &rules);
    if missing.is_empty() {
        return Ok(());
    }
    let mut lines: Vec<String> = missing.iter().map(rbac::compact_string).collect();
    lines.sort();
    lines.dedup();
    let mut message = format!(
        "user {:?} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        go_quoted(&user.groups),
        lines.join("\n")
    );
    if !errors.is_empty() {
        message.push_str(&format!("; resolution errors: {}", go_quoted(&errors)));
    }
    Err(ApiError::forbidden(plural, group, name, &message))
}
