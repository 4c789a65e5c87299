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
pub fn admit(
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
        let rules_changed = match (info.plural.as_str(), old) {
            // An update that keeps what a role or binding grants needs no escalation check (upstream
            // skips it when rules / roleRef are unchanged).
            ("roles" | "clusterroles", Some(o)) => o["rules"] != obj["rules"],
            ("rolebindings" | "clusterrolebindings", Some(o)) => {
                o["roleRef"] != obj["roleRef"] || o["subjects"] != obj["subjects"]
            }
            _ => true,
        };
        if rules_changed {
            crate::authz::confirm_no_escalation(
                api,
                &target.user,
                &info.plural,
                name,
                target.namespace().unwrap_or(""),
                obj,
            )?;
        }
    }
    node_restriction::admit(api, target, op, old, new)
}
