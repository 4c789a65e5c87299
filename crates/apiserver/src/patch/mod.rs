//! Patch formats: JSON Patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch (built-in
//! kinds, `strategic.rs`). Server-side apply (`application/apply-patch+yaml`) is `crate::managed`'s.

pub mod strategic;

use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    /// Server-side apply, handled by `crate::managed`.
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" => Ok(PatchKind::Apply),
            other => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml ({other})"
                ),
                details: None,
            }),
        }
    }
}

/// Applies a patch body to `current`, an object of type `definition` (for strategic merge; `None` for kinds
/// without a built-in schema, which strategic merge does not support).
pub fn apply(
    kind: PatchKind,
    current: &Value,
    body: &[u8],
    definition: Option<&str>,
) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Apply => Err(ApiError::internal(
            "server-side apply is not a patch of the current object",
        )),
        PatchKind::Strategic => {
            let catalog = crate::schema::catalog();
            let Some(def) = definition.filter(|d| catalog.get(d).is_some()) else {
                return Err(ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (strategic merge patch is not supported for this resource)".into(),
                    details: None,
                });
            };
            let patch: Value = serde_json::from_slice(body)
                .map_err(|err| ApiError::bad_request(format!("error decoding patch: {err}")))?;
            strategic::apply(catalog, def, current, &patch).map_err(|strategic::SmpError(m)| {
                ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: m,
                    details: None,
                }
            })
        }
        PatchKind::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|err| ApiError::bad_request(format!("error decoding patch: {err}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &patch).map_err(|err| ApiError {
                code: 422,
                reason: "Invalid",
                message: err.to_string(),
                details: None,
            })?;
            Ok(doc)
        }
        PatchKind::Merge => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|err| ApiError::bad_request(format!("error decoding patch: {err}")))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_merge_patches() {
        let cur = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let merged = apply(
            PatchKind::Merge,
            &cur,
            br#"{"metadata":{"labels":{"x":null,"y":"2"}}}"#,
            None,
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2"}));
        let p = br#"[{"op":"test","path":"/data/k","value":"v"},{"op":"replace","path":"/data/k","value":"w"}]"#;
        assert_eq!(
            apply(PatchKind::Json, &cur, p, None).unwrap()["data"]["k"],
            "w"
        );
        let failing = br#"[{"op":"test","path":"/data/k","value":"nope"}]"#;
        assert_eq!(
            apply(PatchKind::Json, &cur, failing, None)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply(PatchKind::Json, &cur, b"{", None).unwrap_err().code,
            400
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+cbor")
                .unwrap_err()
                .code,
            415
        );
        let smp = apply(
            PatchKind::Strategic,
            &cur,
            br#"{"data":{"k":"w"}}"#,
            Some("io.k8s.api.core.v1.ConfigMap"),
        );
        assert_eq!(smp.unwrap()["data"]["k"], "w");
        let custom = apply(
            PatchKind::Strategic,
            &cur,
            b"{}",
            Some("com.example.v1.Widget"),
        );
        assert_eq!(custom.unwrap_err().code, 415);
    }
}
