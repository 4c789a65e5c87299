//! The built-in resources with upstream's names, short names, categories and etcd key prefixes.

use super::{NameRule, ResourceInfo, Subresource};

use NameRule::{Label, Label1035, PathSegment, Subdomain};
use Subresource::{
    Attach, Binding, Eviction, Exec, Finalize, Log, PortForward, Proxy, Scale, Status, Token,
};

/// (group, version, kind, plural, short names, categories, namespaced, etcd prefix, subresources, name rule)
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    bool,
    &'static str,
    &'static [Subresource],
    NameRule,
);

const ALL: &[&str] = &["all"];

#[rustfmt::skip]
const TABLE: &[Row] = &[
    ("", "v1", "Namespace", "namespaces", &["ns"], &[], false, "namespaces", &[Status, Finalize], Label),
    ("", "v1", "Pod", "pods", &["po"], ALL, true, "pods", &[Status, Binding, Eviction, Log, Exec, Attach, PortForward, Proxy], Subdomain),
    ("", "v1", "Service", "services", &["svc"], ALL, true, "services/specs", &[Status, Proxy], Label1035),
    ("", "v1", "Endpoints", "endpoints", &["ep"], &[], true, "services/endpoints", &[], Subdomain),
    ("", "v1", "Node", "nodes", &["no"], &[], false, "minions", &[Status, Proxy], Subdomain),
    ("", "v1", "ConfigMap", "configmaps", &["cm"], &[], true, "configmaps", &[], Subdomain),
    ("", "v1", "Secret", "secrets", &[], &[], true, "secrets", &[], Subdomain),
    ("", "v1", "ServiceAccount", "serviceaccounts", &["sa"], &[], true, "serviceaccounts", &[Token], Subdomain),
    ("", "v1", "Event", "events", &["ev"], &[], true, "events", &[], Subdomain),
    ("", "v1", "PersistentVolume", "persistentvolumes", &["pv"], &[], false, "persistentvolumes", &[Status], Subdomain),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", &["pvc"], &[], true, "persistentvolumeclaims", &[Status], Subdomain),
    ("", "v1", "LimitRange", "limitranges", &["limits"], &[], true, "limitranges", &[], Subdomain),
    ("", "v1", "ResourceQuota", "resourcequotas", &["quota"], &[], true, "resourcequotas", &[Status], Subdomain),
    ("", "v1", "ReplicationController", "replicationcontrollers", &["rc"], ALL, true, "controllers", &[Scale, Status], Subdomain),
    ("", "v1", "PodTemplate", "podtemplates", &[], &[], true, "podtemplates", &[], Subdomain),
    ("apps", "v1", "Deployment", "deployments", &["deploy"], ALL, true, "deployments", &[Scale, Status], Subdomain),
    ("apps", "v1", "ReplicaSet", "replicasets", &["rs"], ALL, true, "replicasets", &[Scale, Status], Subdomain),
    ("apps", "v1", "StatefulSet", "statefulsets", &["sts"], ALL, true, "statefulsets", &[Scale, Status], Subdomain),
    ("apps", "v1", "DaemonSet", "daemonsets", &["ds"], ALL, true, "daemonsets", &[Status], Subdomain),
    ("apps", "v1", "ControllerRevision", "controllerrevisions", &[], &[], true, "controllerrevisions", &[], Subdomain),
    ("batch", "v1", "Job", "jobs", &[], ALL, true, "jobs", &[Status], Subdomain),
    ("batch", "v1", "CronJob", "cronjobs", &["cj"], ALL, true, "cronjobs", &[Status], Subdomain),
    ("coordination.k8s.io", "v1", "Lease", "leases", &[], &[], true, "leases", &[], Subdomain),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", &[], &[], true, "endpointslices", &[], Subdomain),
    // Stored as core v1 Events, in the same keys (crate::convert).
    ("events.k8s.io", "v1", "Event", "events", &["ev"], &[], true, "events", &[], Subdomain),
    ("networking.k8s.io", "v1", "Ingress", "ingresses", &["ing"], &[], true, "ingress", &[Status], Subdomain),
    ("networking.k8s.io", "v1", "IngressClass", "ingressclasses", &[], &[], false, "ingressclasses", &[], Subdomain),
    ("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", &["netpol"], &[], true, "networkpolicies", &[], Subdomain),
    ("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", &["pdb"], &[], true, "poddisruptionbudgets", &[Status], Subdomain),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", &[], &[], true, "roles", &[], PathSegment),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", &[], &[], true, "rolebindings", &[], PathSegment),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", &[], &[], false, "clusterroles", &[], PathSegment),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", &[], &[], false, "clusterrolebindings", &[], PathSegment),
    ("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", &["pc"], &[], false, "priorityclasses", &[], Subdomain),
    ("storage.k8s.io", "v1", "StorageClass", "storageclasses", &["sc"], &[], false, "storageclasses", &[], Subdomain),
    ("storage.k8s.io", "v1", "CSIDriver", "csidrivers", &[], &[], false, "csidrivers", &[], Subdomain),
    ("storage.k8s.io", "v1", "CSINode", "csinodes", &[], &[], false, "csinodes", &[], Subdomain),
    ("storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", &[], &[], false, "volumeattachments", &[Status], Subdomain),
    ("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses", &[], &[], false, "runtimeclasses", &[], Subdomain),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", &["crd", "crds"], &["api-extensions"], false, "apiextensions.k8s.io/customresourcedefinitions", &[Status], Subdomain),
];

/// Every built-in resource.
pub fn all() -> Vec<ResourceInfo> {
    TABLE
        .iter()
        .map(
            |&(group, version, kind, plural, short, cats, namespaced, prefix, subs, rule)| {
                ResourceInfo {
                    group: group.into(),
                    version: version.into(),
                    kind: kind.into(),
                    plural: plural.into(),
                    singular: kind.to_ascii_lowercase(),
                    short_names: short.iter().map(|s| s.to_string()).collect(),
                    categories: cats.iter().map(|s| s.to_string()).collect(),
                    namespaced,
                    storage_prefix: format!("/registry/{prefix}"),
                    subresources: subs.to_vec(),
                    name_rule: rule,
                    custom: None,
                    create_only: false,
                }
            },
        )
        .chain(
            CREATE_ONLY
                .iter()
                .map(|&(group, kind, plural, namespaced)| ResourceInfo {
                    group: group.into(),
                    version: "v1".into(),
                    kind: kind.into(),
                    plural: plural.into(),
                    singular: kind.to_ascii_lowercase(),
                    short_names: Vec::new(),
                    categories: Vec::new(),
                    namespaced,
                    storage_prefix: String::new(),
                    subresources: Vec::new(),
                    name_rule: Subdomain,
                    custom: None,
                    create_only: true,
                }),
        )
        .collect()
}

/// Kinds that are answered and never stored: (group, kind, plural, namespaced).
#[rustfmt::skip]
const CREATE_ONLY: &[(&str, &str, &str, bool)] = &[
    ("authentication.k8s.io", "TokenReview", "tokenreviews", false),
    ("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews", false),
    ("authorization.k8s.io", "LocalSubjectAccessReview", "localsubjectaccessreviews", true),
    ("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews", false),
    ("authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews", false),
    ("authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews", false),
];
