//! The resource table: every served resource as one entry (group, version, kind, names, scope, storage key,
//! subresources), looked up by the generic handlers. Built-in kinds come from `builtin.rs`.

mod builtin;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// How a resource's object names are validated (upstream's `ValidateNameFunc`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain (most resources).
    Subdomain,
    /// DNS-1123 label (namespaces).
    Label,
    /// DNS-1035 label (services).
    Label1035,
    /// Any name that is a valid path segment (RBAC objects: `system:controller:…`).
    PathSegment,
}

/// A subresource served by the generic handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes change only `status`; main-resource writes ignore `status`.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale view of `spec.replicas`.
    Scale,
    /// `pods/binding`: assigns a pod to a node (the scheduler's write).
    Binding,
    /// `pods/eviction`: deletes a pod unless a PodDisruptionBudget forbids it.
    Eviction,
    /// `pods/log`: the container's log, streamed from its kubelet.
    Log,
    /// `pods/exec`, `pods/attach`, `pods/portforward`: connection upgrades passed through to the kubelet.
    Exec,
    Attach,
    PortForward,
    /// `nodes/proxy`: any request passed through to the node's kubelet.
    Proxy,
    /// `serviceaccounts/token`: a TokenRequest for a bound service-account token.
    Token,
    /// `namespaces/finalize`: writes change only `spec.finalizers` (the namespace controller's last step).
    Finalize,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Eviction => "eviction",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
            Subresource::Proxy => "proxy",
            Subresource::Token => "token",
            Subresource::Finalize => "finalize",
        }
    }

    /// The verbs it serves.
    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => SUBRESOURCE_VERBS,
            Subresource::Binding | Subresource::Eviction | Subresource::Token => &["create"],
            Subresource::Log => &["get"],
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => {
                &["create", "get"]
            }
            Subresource::Proxy => &["create", "delete", "get", "patch", "update"],
            Subresource::Finalize => &["update"],
        }
    }
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    /// The etcd key prefix without a trailing slash, e.g. `/registry/pods`.
    pub storage_prefix: String,
    pub subresources: Vec<Subresource>,
    pub name_rule: NameRule,
    /// Set for custom resources (served from a CustomResourceDefinition).
    pub custom: Option<Arc<crate::crd::Custom>>,
    /// Answered, never stored (access and token reviews): only `create` is served.
    pub create_only: bool,
}

/// The verbs every resource in the table serves.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs a status or scale subresource serves.
pub const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

impl ResourceInfo {
    /// The verbs the resource serves.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.create_only { &["create"] } else { VERBS }
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }

    /// The etcd key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{ns}/{name}", self.storage_prefix),
            _ => format!("{}/{name}", self.storage_prefix),
        }
    }

    /// The etcd key prefix of a list (all namespaces when `namespace` is `None`), ending in `/`.
    pub fn list_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{ns}/", self.storage_prefix),
            _ => format!("{}/", self.storage_prefix),
        }
    }

    /// The API path of one object (for `selfLink`-free messages and Location headers).
    pub fn path(&self, namespace: Option<&str>, name: &str) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => {
                format!("{base}/namespaces/{ns}/{}/{name}", self.plural)
            }
            _ => format!("{base}/{}/{name}", self.plural),
        }
    }
}

/// A group-version and the resources it serves, in discovery order.
#[derive(Debug, Clone)]
pub struct GroupVersion {
    pub group: String,
    pub version: String,
    pub resources: Vec<Arc<ResourceInfo>>,
}

/// The table of served resources.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_path: HashMap<(String, String, String), Arc<ResourceInfo>>,
    order: Vec<Arc<ResourceInfo>>,
}

impl Registry {
    /// A registry holding every built-in resource.
    pub fn with_builtins() -> Self {
        let registry = Self::default();
        for info in builtin::all() {
            registry.add(info);
        }
        registry
    }

    /// Adds (or replaces) a resource.
    pub fn add(&self, info: ResourceInfo) {
        let info = Arc::new(info);
        let mut inner = self.inner.write();
        let key = (
            info.group.clone(),
            info.version.clone(),
            info.plural.clone(),
        );
        inner
            .order
            .retain(|r| (&r.group, &r.version, &r.plural) != (&key.0, &key.1, &key.2));
        inner.order.push(info.clone());
        inner.by_path.insert(key, info);
    }

    /// Stops serving every version of the CRD `crd_name`.
    pub fn remove_custom(&self, crd_name: &str) {
        let mut inner = self.inner.write();
        let owned =
            |r: &Arc<ResourceInfo>| r.custom.as_ref().is_some_and(|c| c.crd_name == crd_name);
        inner.order.retain(|r| !owned(r));
        inner.by_path.retain(|_, r| !owned(r));
    }

    /// The resource served at `/apis/<group>/<version>/<plural>`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.inner
            .read()
            .by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// The first served version of `<plural>.<group>` (all versions share one storage prefix).
    pub fn get_any_version(&self, group: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.inner
            .read()
            .order
            .iter()
            .find(|r| r.group == group && r.plural == plural && !r.create_only)
            .cloned()
    }

    /// The resource of a kind in a group-version (used to check bodies' `kind`).
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.inner
            .read()
            .order
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
    }

    /// Every group-version, core first, in registration order.
    pub fn group_versions(&self) -> Vec<GroupVersion> {
        let inner = self.inner.read();
        let mut out: Vec<GroupVersion> = Vec::new();
        for r in &inner.order {
            match out
                .iter_mut()
                .find(|gv| gv.group == r.group && gv.version == r.version)
            {
                Some(gv) => gv.resources.push(r.clone()),
                None => out.push(GroupVersion {
                    group: r.group.clone(),
                    version: r.version.clone(),
                    resources: vec![r.clone()],
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_upstream_layout() {
        let reg = Registry::with_builtins();
        let pods = reg.get("", "v1", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "p"), "/registry/pods/default/p");
        let svc = reg.get("", "v1", "services").unwrap();
        assert_eq!(svc.list_prefix(None), "/registry/services/specs/");
        let nodes = reg.get("", "v1", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/minions/n1");
        let deploy = reg.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert!(deploy.has(Subresource::Scale));
        assert!(reg.by_kind("apps", "v1", "Deployment").is_some());
        let gvs = reg.group_versions();
        assert_eq!(gvs[0].group, "");
        assert!(gvs.iter().any(|gv| gv.group == "rbac.authorization.k8s.io"));
    }
}
