//! Admission: checks that run on a write after authorization and validation, before it is stored, in
//! upstream's order. So far RBAC's escalation prevention (upstream runs it in the RBAC storage; here it
//! sits at the same point of the write) and NodeRestriction; NamespaceLifecycle lives in the write path.

pub mod node_restriction;

use serde_json::Value;

use crate::api::Api;
use crate::handlers::Target;
use crate::status::ApiError;

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// Runs the admission checks for a write of `target`: `old` is the stored object (update, delete), `new`
/// the object to store (create, update).
pub async fn admit(
    api: &Api,
    target: &Target,
    op: Operation,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Result<(), ApiError> {
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
    node_restriction::admit(api, target, op, old, new).await
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
