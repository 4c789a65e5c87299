//! The RBAC bootstrap policy (upstream's default roles and bindings, written in our notation in
//! `bootstrap_policy.txt`), reconciled at every start as upstream's: missing objects are created; objects
//! whose `rbac.authorization.kubernetes.io/autoupdate` annotation is still `"true"` get missing rules,
//! aggregation selectors and subjects added; nothing a user added is taken away, and a user who set the
//! annotation to `"false"` keeps the object as it is.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use super::rbac::{PolicyRule, uncovered};
use crate::api::Api;
use crate::status::ApiError;

const TEXT: &str = include_str!("bootstrap_policy.txt");
const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const GROUP: &str = "rbac.authorization.k8s.io";

/// One object of the policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Object {
    /// ClusterRole, ClusterRoleBinding, Role or RoleBinding.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub aggregate: Vec<BTreeMap<String, String>>,
    pub rules: Vec<PolicyRule>,
    /// Bindings: the role's kind (ClusterRole or Role) and name.
    pub role_ref: Option<(&'static str, String)>,
    pub subjects: Vec<(String, String, String)>,
    pub autoupdate: bool,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| {
            if x == "\"\"" {
                String::new()
            } else {
                x.to_string()
            }
        })
        .collect()
}

fn labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("want key=value, got {kv:?}"))
        })
        .collect()
}

/// Parses the notation (see the head of `bootstrap_policy.txt`).
pub fn parse(text: &str) -> Result<Vec<Object>, String> {
    let mut out: Vec<Object> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |m: &str| format!("bootstrap policy line {}: {m}: {raw:?}", i + 1);
        let f: Vec<&str> = line.split(' ').filter(|s| !s.is_empty()).collect();
        let new =
            |kind: &'static str, ns: &str, name: &str, role: Option<(&'static str, &str)>| Object {
                kind,
                namespace: ns.to_string(),
                name: name.to_string(),
                role_ref: role.map(|(k, n)| (k, n.to_string())),
                autoupdate: true,
                ..Object::default()
            };
        match f.as_slice() {
            ["clusterrole", name] => out.push(new("ClusterRole", "", name, None)),
            ["clusterrolebinding", name, role] => out.push(new(
                "ClusterRoleBinding",
                "",
                name,
                Some(("ClusterRole", role)),
            )),
            ["role", ns, name] => out.push(new("Role", ns, name, None)),
            ["rolebinding", ns, name, role] => {
                // A binding in a namespace refers to a Role there unless the name is a cluster role's.
                out.push(new("RoleBinding", ns, name, Some(("Role", role))))
            }
            rest => {
                let obj = out
                    .last_mut()
                    .ok_or_else(|| err("statement before any object"))?;
                match rest {
                    ["label", kv] => obj.labels.extend(labels(kv).map_err(|e| err(&e))?),
                    ["aggregate", kv] => obj.aggregate.push(labels(kv).map_err(|e| err(&e))?),
                    ["rule", verbs, groups, resources] | ["rule", verbs, groups, resources, _] => {
                        obj.rules.push(PolicyRule {
                            verbs: list(verbs),
                            api_groups: list(groups),
                            resources: list(resources),
                            resource_names: rest.get(4).map(|n| list(n)).unwrap_or_default(),
                            non_resource_urls: Vec::new(),
                        })
                    }
                    ["url", verbs, urls] => obj.rules.push(PolicyRule {
                        verbs: list(verbs),
                        non_resource_urls: list(urls),
                        ..PolicyRule::default()
                    }),
                    ["subject", kind, name] => {
                        let (ns, n) = match *kind {
                            "ServiceAccount" => name
                                .split_once('/')
                                .ok_or_else(|| err("want namespace/name"))?,
                            _ => ("", *name),
                        };
                        obj.subjects
                            .push((kind.to_string(), n.to_string(), ns.to_string()));
                    }
                    ["noautoupdate"] => obj.autoupdate = false,
                    ["roleref", "ClusterRole"] => {
                        if let Some((k, _)) = obj.role_ref.as_mut() {
                            *k = "ClusterRole";
                        }
                    }
                    _ => return Err(err("unknown statement")),
                }
            }
        }
    }
    // A RoleBinding naming a role the policy defines only as a ClusterRole refers to that ClusterRole.
    let cluster_roles: Vec<String> = out
        .iter()
        .filter(|o| o.kind == "ClusterRole")
        .map(|o| o.name.clone())
        .collect();
    let roles: Vec<(String, String)> = out
        .iter()
        .filter(|o| o.kind == "Role")
        .map(|o| (o.namespace.clone(), o.name.clone()))
        .collect();
    for o in out.iter_mut().filter(|o| o.kind == "RoleBinding") {
        if let Some((kind, name)) = o.role_ref.as_mut() {
            let local = roles.iter().any(|(ns, n)| *ns == o.namespace && n == name);
            if !local && cluster_roles.contains(name) {
                *kind = "ClusterRole";
            }
        }
    }
    Ok(out)
}

/// The parsed policy (it is compiled in, so a parse failure is a build mistake caught by the tests).
pub fn objects() -> &'static [Object] {
    static POLICY: OnceLock<Vec<Object>> = OnceLock::new();
    POLICY.get_or_init(|| {
        parse(TEXT).unwrap_or_else(|e| {
            tracing::error!(err = %e, "bootstrap policy does not parse");
            Vec::new()
        })
    })
}

/// The rules of the policy's cluster role `name` (the node authorizer's static `system:node` rules).
pub fn cluster_role_rules(name: &str) -> Vec<PolicyRule> {
    objects()
        .iter()
        .find(|o| o.kind == "ClusterRole" && o.name == name)
        .map(|o| o.rules.clone())
        .unwrap_or_default()
}

impl Object {
    fn plural(&self) -> &'static str {
        match self.kind {
            "ClusterRole" => "clusterroles",
            "ClusterRoleBinding" => "clusterrolebindings",
            "Role" => "roles",
            _ => "rolebindings",
        }
    }

    fn subjects_json(&self) -> Vec<Value> {
        self.subjects
            .iter()
            .map(|(kind, name, ns)| match kind.as_str() {
                "ServiceAccount" => json!({"kind": kind, "name": name, "namespace": ns}),
                _ => json!({"apiGroup": GROUP, "kind": kind, "name": name}),
            })
            .collect()
    }

    fn aggregation_json(&self) -> Value {
        let selectors: Vec<Value> = self
            .aggregate
            .iter()
            .map(|m| json!({"matchLabels": m}))
            .collect();
        json!({"clusterRoleSelectors": selectors})
    }

    /// The object as the API stores it.
    pub fn to_json(&self) -> Value {
        let mut labels: Map<String, Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        labels.insert("kubernetes.io/bootstrapping".into(), "rbac-defaults".into());
        let mut meta = json!({
            "name": self.name,
            "labels": labels,
            "annotations": {AUTOUPDATE: if self.autoupdate { "true" } else { "false" }},
        });
        if !self.namespace.is_empty() {
            meta["namespace"] = json!(self.namespace);
        }
        let mut obj =
            json!({"apiVersion": format!("{GROUP}/v1"), "kind": self.kind, "metadata": meta});
        match &self.role_ref {
            Some((kind, name)) => {
                obj["roleRef"] = json!({"apiGroup": GROUP, "kind": kind, "name": name});
                obj["subjects"] = Value::Array(self.subjects_json());
            }
            None => {
                if self.aggregate.is_empty() {
                    obj["rules"] = serde_json::to_value(&self.rules).unwrap_or_default();
                } else {
                    obj["aggregationRule"] = self.aggregation_json();
                    obj["rules"] = Value::Null;
                }
            }
        }
        obj
    }

    /// `current` with what this policy object adds (`None` when nothing is missing), as upstream's
    /// reconciliation without removing extra permissions.
    fn reconciled(&self, current: &Value) -> Option<Value> {
        // Only an explicit "false" stops reconciliation (upstream's rule).
        if current["metadata"]["annotations"][AUTOUPDATE] == "false" {
            return None;
        }
        let mut out = current.clone();
        let mut changed = false;
        let want_labels = self.to_json()["metadata"]["labels"].clone();
        for (k, v) in want_labels.as_object().into_iter().flatten() {
            if current["metadata"]["labels"].get(k).is_none() {
                crate::meta::metadata_mut(&mut out)
                    .entry("labels")
                    .or_insert_with(|| json!({}))[k] = v.clone();
                changed = true;
            }
        }
        if let Some((kind, name)) = &self.role_ref {
            let existing: Vec<Value> = current["subjects"].as_array().cloned().unwrap_or_default();
            let mut subjects = existing.clone();
            for s in self.subjects_json() {
                let same = |e: &Value| {
                    e["kind"] == s["kind"]
                        && e["name"] == s["name"]
                        && e["namespace"].as_str().unwrap_or("")
                            == s["namespace"].as_str().unwrap_or("")
                };
                if !existing.iter().any(same) {
                    subjects.push(s);
                    changed = true;
                }
            }
            out["subjects"] = Value::Array(subjects);
            if current["roleRef"]["kind"] != *kind || current["roleRef"]["name"] != name.as_str() {
                // The role reference cannot change in place; the policy's binding wins.
                out["roleRef"] = json!({"apiGroup": GROUP, "kind": kind, "name": name});
                changed = true;
            }
        } else if !self.aggregate.is_empty() {
            let mut selectors = current["aggregationRule"]["clusterRoleSelectors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for m in &self.aggregate {
                let sel = json!({"matchLabels": m});
                if !selectors.contains(&sel) {
                    selectors.push(sel);
                    changed = true;
                }
            }
            out["aggregationRule"] = json!({"clusterRoleSelectors": selectors});
        } else {
            let existing: Vec<PolicyRule> =
                serde_json::from_value(current["rules"].clone()).unwrap_or_default();
            let missing = uncovered(&existing, &self.rules);
            if !missing.is_empty() {
                let mut rules = existing;
                rules.extend(missing);
                out["rules"] = serde_json::to_value(rules).unwrap_or_default();
                changed = true;
            }
        }
        changed.then_some(out)
    }
}

/// Creates or reconciles every policy object (called at start until it succeeds).
pub async fn reconcile(api: &Api) -> Result<(), ApiError> {
    for obj in objects() {
        let info = api
            .registry
            .get(GROUP, "v1", obj.plural())
            .ok_or_else(|| ApiError::internal(format!("{} is not served", obj.plural())))?;
        let ns = (!obj.namespace.is_empty()).then_some(obj.namespace.as_str());
        let key = info.key(ns, &obj.name);
        match api.storage.get(&key).await? {
            None => crate::bootstrap::ensure(api, GROUP, obj.plural(), obj.to_json(), &[]).await?,
            Some(stored) => {
                let current: Value = serde_json::from_slice(&stored.value)
                    .map_err(|e| ApiError::internal(format!("decoding {key}: {e}")))?;
                if let Some(next) = obj.reconciled(&current) {
                    let role_changed = next["roleRef"] != current["roleRef"];
                    if role_changed {
                        api.storage.delete(&key, stored.mod_revision).await?;
                        crate::bootstrap::ensure(api, GROUP, obj.plural(), next, &[]).await?;
                    } else {
                        api.storage
                            .update(&key, crate::handlers::to_stored(&next), stored.mod_revision)
                            .await?;
                    }
                    tracing::info!(kind = obj.kind, name = %obj.name, "reconciled RBAC bootstrap object");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_policy_parses_and_holds_the_upstream_roles() {
        let objs = parse(TEXT).unwrap();
        let names: Vec<&str> = objs.iter().map(|o| o.name.as_str()).collect();
        for want in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:node",
            "system:kube-scheduler",
            "system:kube-controller-manager",
            "system:node-proxier",
            "system:discovery",
            "system:basic-user",
            "system:public-info-viewer",
            "system:controller:generic-garbage-collector",
        ] {
            assert!(names.contains(&want), "{want} missing");
        }
        let admin = objs
            .iter()
            .find(|o| o.name == "cluster-admin" && o.kind == "ClusterRoleBinding")
            .unwrap();
        assert_eq!(
            admin.subjects,
            vec![("Group".into(), "system:masters".into(), String::new())]
        );
        assert!(!cluster_role_rules("system:node").is_empty());
        let edit = objs
            .iter()
            .find(|o| o.name == "edit" && o.kind == "ClusterRole")
            .unwrap();
        assert!(edit.rules.is_empty() && !edit.aggregate.is_empty());
    }

    #[test]
    fn reconciling_adds_what_is_missing_and_keeps_user_changes() {
        let objs = parse(
            "clusterrole r\n  rule get \"\" pods\nclusterrolebinding b r\n  subject Group g\n",
        )
        .unwrap();
        let role = &objs[0];
        let mut stored = role.to_json();
        assert!(role.reconciled(&stored).is_none());
        stored["rules"] = json!([{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}]);
        let next = role.reconciled(&stored).unwrap();
        assert_eq!(
            next["rules"].as_array().unwrap().len(),
            2,
            "user's rule kept, ours added"
        );
        stored["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert!(role.reconciled(&stored).is_none());
        let binding = &objs[1];
        let mut b = binding.to_json();
        b["subjects"] = json!([{"kind": "User", "name": "u", "apiGroup": GROUP}]);
        let next = binding.reconciled(&b).unwrap();
        assert_eq!(next["subjects"].as_array().unwrap().len(), 2);
    }
}
