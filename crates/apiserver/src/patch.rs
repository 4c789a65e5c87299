//! Patch formats: JSON Patch (RFC 6902) and JSON merge patch (RFC 7386). Strategic merge and server-side
//! apply are refused with 415 until their modules land.

use serde_json::Value;

use crate::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        match ct {
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            other => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json ({other})"
                ),
                details: None,
            }),
        }
    }
}

/// Applies a patch body to `current`.
pub fn apply(kind: PatchKind, current: &Value, body: &[u8]) -> Result<Value, ApiError> {
    match kind {
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
        )
        .unwrap();
        assert_eq!(merged["metadata"]["labels"], json!({"y": "2"}));
        let p = br#"[{"op":"test","path":"/data/k","value":"v"},{"op":"replace","path":"/data/k","value":"w"}]"#;
        assert_eq!(apply(PatchKind::Json, &cur, p).unwrap()["data"]["k"], "w");
        let failing = br#"[{"op":"test","path":"/data/k","value":"nope"}]"#;
        assert_eq!(apply(PatchKind::Json, &cur, failing).unwrap_err().code, 422);
        assert_eq!(apply(PatchKind::Json, &cur, b"{").unwrap_err().code, 400);
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml")
                .unwrap_err()
                .code,
            415
        );
    }
}
