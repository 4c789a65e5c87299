//! Admission, in upstream's order. Mutating plugins run on the defaulted object before validation
//! (`mutate`: LimitRanger defaults, Priority, DefaultTolerationSeconds, DefaultStorageClass); validating
//! plugins after it, before the write is stored (`admit`: RBAC's escalation prevention — upstream runs it
//! in the RBAC storage, here it sits at the same point — LimitRanger's bounds, NodeRestriction,
//! PodSecurity, ResourceQuota). NamespaceLifecycle lives in the write path. [`Plugins`] holds which are on
//! (`--enable-admission-plugins`, `--disable-admission-plugins`).

pub mod defaults;
pub mod limit_ranger;
pub mod node_restriction;
pub mod pod_security;
pub use k3rs_common::quantity;
pub mod resource_quota;
pub mod service_account;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::api::Api;
use crate::handlers::Target;
use crate::status::ApiError;

/// The plugins this apiserver has, by upstream's names; all are on unless disabled.
pub const PLUGINS: &[&str] = &[
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "NodeRestriction",
    "PodSecurity",
    "Priority",
    "DefaultTolerationSeconds",
    "DefaultStorageClass",
    "StorageObjectInUseProtection",
    "ResourceQuota",
];

/// Which admission plugins run.
#[derive(Debug, Clone)]
pub struct Plugins {
    disabled: BTreeSet<String>,
    /// DefaultTolerationSeconds' `--default-not-ready-toleration-seconds` and
    /// `--default-unreachable-toleration-seconds`.
    pub not_ready_seconds: i64,
    pub unreachable_seconds: i64,
}

impl Default for Plugins {
    fn default() -> Self {
        Self {
            disabled: BTreeSet::new(),
            not_ready_seconds: 300,
            unreachable_seconds: 300,
        }
    }
}

impl Plugins {
    /// From the flags: enabling a plugin this build lacks is an error; NamespaceLifecycle cannot be turned
    /// off (it is part of the write path); disabling a plugin this build lacks changes nothing.
    pub fn new(enable: &[String], disable: &[String]) -> Result<Self, String> {
        let mut disabled = BTreeSet::new();
        for name in enable {
            if !PLUGINS.contains(&name.as_str()) {
                return Err(format!(
                    "--enable-admission-plugins: plugin {name:?} is unknown (k3rs has: {})",
                    PLUGINS.join(", ")
                ));
            }
        }
        for name in disable {
            if name == "NamespaceLifecycle" {
                return Err(
                    "--disable-admission-plugins: NamespaceLifecycle cannot be disabled in k3rs"
                        .into(),
                );
            }
            if enable.contains(name) {
                return Err(format!(
                    "admission plugin {name:?} is both enabled and disabled"
                ));
            }
            if PLUGINS.contains(&name.as_str()) {
                disabled.insert(name.clone());
            } else {
                tracing::warn!(plugin = %name, "--disable-admission-plugins: unknown plugin, nothing to disable");
            }
        }
        Ok(Self {
            disabled,
            ..Self::default()
        })
    }

    pub fn on(&self, name: &str) -> bool {
        !self.disabled.contains(name)
    }
}

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

fn is_core(target: &Target, plural: &str) -> bool {
    target.info.group.is_empty() && target.info.custom.is_none() && target.info.plural == plural
}

/// The LimitRanges of a namespace.
fn limit_ranges(api: &Api, ns: &str) -> Vec<Value> {
    api.limit_ranges
        .list(&format!("/registry/limitranges/{ns}/"))
        .iter()
        .map(|v| (**v).clone())
        .collect()
}

/// The mutating plugins, on a new object (after defaulting, before validation).
pub async fn mutate(
    api: &Api,
    target: &Target,
    op: Operation,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if op != Operation::Create || target.req.subresource.is_some() {
        return Ok(());
    }
    // The plugins below write into `spec` and `metadata.annotations`: anything but an object there is
    // refused as upstream's decoder refuses it.
    for (path, v) in [
        ("spec", &obj["spec"]),
        ("metadata.annotations", &obj["metadata"]["annotations"]),
    ] {
        if !(v.is_object() || v.is_null()) {
            return Err(ApiError::bad_request(format!(
                "error decoding request body: json: cannot unmarshal {} into Go struct field of type {}",
                if v.is_array() {
                    "array"
                } else if v.is_string() {
                    "string"
                } else {
                    "number"
                },
                path
            )));
        }
    }
    let on = |p: &str| api.admission.on(p);
    if is_core(target, "pods") {
        let ns = target.namespace().unwrap_or("");
        if on("LimitRanger")
            && let Some(note) = limit_ranger::default_pod(&limit_ranges(api, ns), obj)
        {
            crate::meta::metadata_mut(obj)
                .entry("annotations")
                .or_insert_with(|| serde_json::json!({}))["kubernetes.io/limit-ranger"] =
                Value::String(note);
        }
        if on("ServiceAccount") {
            service_account::admit_pod(api, target, obj).await?;
        }
        if on("Priority") {
            defaults::priority(api, target, obj)?;
        }
        if on("DefaultTolerationSeconds") {
            defaults::toleration_seconds(
                obj,
                api.admission.not_ready_seconds,
                api.admission.unreachable_seconds,
            );
        }
    } else if is_core(target, "persistentvolumeclaims") {
        if on("DefaultStorageClass") {
            defaults::storage_class(api, obj).await?;
        }
        if on("StorageObjectInUseProtection") {
            defaults::add_finalizer(obj, "kubernetes.io/pvc-protection");
        }
    } else if is_core(target, "persistentvolumes") && on("StorageObjectInUseProtection") {
        defaults::add_finalizer(obj, "kubernetes.io/pv-protection");
    }
    Ok(())
}

/// Runs the validating checks for a write of `target`: `old` is the stored object (update, delete), `new`
/// the object to store (create, update). Returns warnings for the client.
pub async fn admit(
    api: &Api,
    target: &Target,
    op: Operation,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let mut warnings = Vec::new();
    let info = &target.info;
    if info.group == "rbac.authorization.k8s.io"
        && info.custom.is_none()
        && op != Operation::Delete
        && let Some(obj) = new
    {
        let name = obj["metadata"]["name"].as_str().unwrap_or("");
        // Only an update that touches nothing but what the garbage collector writes skips the check
        // (upstream's IsOnlyMutatingGCFields): labels alone can pull a role into an aggregation.
        let gc_only = old.is_some_and(|o| only_gc_fields(o, obj));
        if !gc_only {
            crate::authz::confirm_no_escalation(
                api,
                &target.user,
                &info.plural,
                name,
                target.namespace().unwrap_or(""),
                obj,
                old.is_some_and(|o| o.get("aggregationRule").is_some_and(|a| !a.is_null())),
            )?;
        }
    }
    let name = new
        .or(old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or("")
        .to_string();
    let on = |p: &str| api.admission.on(p);
    if op == Operation::Create
        && on("LimitRanger")
        && target.req.subresource.is_none()
        && is_core(target, "pods")
        && let Some(pod) = new
    {
        let errs =
            limit_ranger::validate_pod(&limit_ranges(api, target.namespace().unwrap_or("")), pod);
        if !errs.is_empty() {
            let why = match errs.as_slice() {
                [one] => one.clone(),
                many => format!("[{}]", many.join(", ")),
            };
            return Err(ApiError::forbidden(&info.plural, &info.group, &name, &why));
        }
    }
    if on("NodeRestriction") {
        node_restriction::admit(api, target, op, old, new).await?;
    }
    if op == Operation::Create
        && target.req.subresource.is_none()
        && let Some(obj) = new
    {
        if on("PodSecurity") {
            pod_security_check(api, target, &name, obj, &mut warnings).await?;
        }
        if on("ResourceQuota") {
            resource_quota::admit_create(api, target, obj).await?;
        }
    }
    if op == Operation::Update
        && on("ResourceQuota")
        && target.req.subresource.is_none()
        && let (Some(old), Some(new)) = (old, new)
    {
        resource_quota::admit_update(api, target, old, new).await?;
    }
    Ok(warnings)
}

/// PodSecurity for a new pod (enforced) or pod-template workload (warnings only).
async fn pod_security_check(
    api: &Api,
    target: &Target,
    name: &str,
    obj: &Value,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let info = &target.info;
    if info.custom.is_some() {
        return Ok(());
    }
    let Some(ns) = target.namespace() else {
        return Ok(());
    };
    let Some((meta, spec)) = pod_security::pod_parts(&info.kind, obj) else {
        return Ok(());
    };
    let key = format!("/registry/namespaces/{ns}");
    let namespace: Value = match api.namespaces.get(&key) {
        Some(n) => (*n).clone(),
        // Not in the informer yet (created a moment ago): read it.
        None => match api.storage.get(&key).await? {
            Some(stored) => serde_json::from_slice(&stored.value).unwrap_or_default(),
            None => return Ok(()),
        },
    };
    let is_pod = info.kind == "Pod";
    if is_pod && let Some((level, version)) = pod_security::level(&namespace, "enforce") {
        let failures = pod_security::evaluate(&level, meta, spec);
        if !failures.is_empty() {
            return Err(ApiError::forbidden(
                &info.plural,
                &info.group,
                name,
                &pod_security::message(&level, &version, &failures),
            ));
        }
    }
    // Workloads are warned about their template against the enforce level too (upstream).
    let modes: &[&str] = if is_pod {
        &["warn"]
    } else {
        &["enforce", "warn"]
    };
    for mode in modes {
        if let Some((level, version)) = pod_security::level(&namespace, mode) {
            let failures = pod_security::evaluate(&level, meta, spec);
            if !failures.is_empty() {
                let w = pod_security::message(&level, &version, &failures).replacen(
                    "violates",
                    "would violate",
                    1,
                );
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
        }
    }
    Ok(())
}

/// Whether `new` differs from `old` only in owner references and finalizers.
fn only_gc_fields(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
                "generation",
            ] {
                m.remove(f);
            }
        }
        v
    };
    strip(old) == strip(new)
}
