//! CustomResourceDefinitions: validating a CRD, the status the apiserver gives it (names accepted,
//! established, stored versions), turning its served versions into resource-table entries, and keeping the
//! table in step with the stored CRDs (a watch, so every apiserver serves the same CRDs).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::resources::{NameRule, ResourceInfo, Subresource};
use crate::status::Cause;
use crate::storage::{WatchEvent, WatchMessage, prefix_end};

/// The etcd key prefix of CRDs.
pub const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// One printer column (`additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// The scale subresource's paths.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// What a custom resource's table entry carries beyond a built-in's.
#[derive(Debug, Clone)]
pub struct Custom {
    pub crd_name: String,
    pub storage_version: String,
    /// `openAPIV3Schema` of this version (structural).
    pub schema: Value,
    pub columns: Vec<Column>,
    pub scale: Option<ScalePaths>,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Validates a CRD (upstream's `ValidateCustomResourceDefinition`, the parts clients hit).
pub fn validate(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = str_at(crd, "/spec/group");
    let plural = str_at(crd, "/spec/names/plural");
    let kind = str_at(crd, "/spec/names/kind");
    let name = str_at(crd, "/metadata/name");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    }
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match str_at(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => causes.push(Cause::required("spec.scope")),
        other => causes.push(Cause::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(
                versions
                    .iter()
                    .map(|v| v["name"].clone())
                    .collect::<Vec<_>>()
            ),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if str_at(v, "/name").is_empty() {
            causes.push(Cause::required(format!("spec.versions[{i}].name")));
        }
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push(Cause::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            ))),
            Some(s) if s["type"] != "object" => causes.push(Cause::invalid(
                format!("spec.versions[{i}].schema.openAPIV3Schema.type"),
                &s["type"],
                "must be object at the root",
            )),
            Some(_) => {}
        }
    }
    causes
}

/// The status the apiserver gives a CRD it accepts: names accepted, established, and the stored versions
/// (kept from `previous`).
pub fn status(crd: &Value, previous: Option<&Value>, now: &str) -> Value {
    let names = &crd["spec"]["names"];
    let kind = str_at(names, "/kind");
    let mut accepted = names.clone();
    if accepted["singular"].as_str().is_none_or(str::is_empty) {
        accepted["singular"] = json!(kind.to_ascii_lowercase());
    }
    if accepted["listKind"].as_str().is_none_or(str::is_empty) {
        accepted["listKind"] = json!(format!("{kind}List"));
    }
    let mut stored: Vec<Value> = previous
        .and_then(|p| p["status"]["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
        if v["storage"] == true && !stored.contains(&v["name"]) {
            stored.push(v["name"].clone());
        }
    }
    let since = |t: &str| {
        previous
            .and_then(|p| p["status"]["conditions"].as_array())
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now))
    };
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": since("Established")},
        ],
        "storedVersions": stored,
    })
}

/// The table entries of a CRD's served versions.
pub fn resources(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let group = str_at(spec, "/group").to_string();
    let plural = str_at(names, "/plural").to_string();
    let kind = str_at(names, "/kind").to_string();
    let singular = match str_at(names, "/singular") {
        "" => kind.to_ascii_lowercase(),
        s => s.to_string(),
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let storage_version = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .map(|v| str_at(v, "/name").to_string())
        .unwrap_or_default();
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] != true {
            continue;
        }
        let mut subresources = Vec::new();
        if v.pointer("/subresources/status").is_some() {
            subresources.push(Subresource::Status);
        }
        let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
            spec_replicas: str_at(s, "/specReplicasPath").to_string(),
            status_replicas: str_at(s, "/statusReplicasPath").to_string(),
            label_selector: s["labelSelectorPath"].as_str().map(str::to_string),
        });
        if scale.is_some() {
            subresources.push(Subresource::Scale);
        }
        let mut columns: Vec<Column> = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Column {
                name: str_at(c, "/name").to_string(),
                kind: str_at(c, "/type").to_string(),
                format: str_at(c, "/format").to_string(),
                description: str_at(c, "/description").to_string(),
                priority: c["priority"].as_i64().unwrap_or(0),
                json_path: str_at(c, "/jsonPath").to_string(),
            })
            .collect();
        if v.get("additionalPrinterColumns").is_none() {
            columns.push(Column {
                name: "Age".into(),
                kind: "date".into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: ".metadata.creationTimestamp".into(),
            });
        }
        out.push(ResourceInfo {
            group: group.clone(),
            version: str_at(v, "/name").to_string(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            namespaced: spec["scope"] == "Namespaced",
            storage_prefix: format!("/registry/{group}/{plural}"),
            subresources,
            name_rule: NameRule::Subdomain,
            create_only: false,
            custom: Some(Arc::new(Custom {
                crd_name: str_at(crd, "/metadata/name").to_string(),
                storage_version: storage_version.clone(),
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
                columns,
                scale,
            })),
        });
    }
    out
}

/// Makes the table serve `crd` (replacing its previous versions), or nothing if it is being deleted.
pub fn register(api: &Api, crd: &Value) {
    let name = str_at(crd, "/metadata/name");
    api.registry.remove_custom(name);
    if crd["metadata"].get("deletionTimestamp").is_none() {
        for info in resources(crd) {
            api.registry.add(info);
        }
    }
}

/// Loads every stored CRD, then follows changes until `shutdown`.
pub async fn sync(api: Arc<Api>, shutdown: CancellationToken) {
    loop {
        match sync_once(&api, &shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(%err, "following CustomResourceDefinitions failed, restarting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Registers every stored CRD (at start, before readiness); returns the revision read.
pub async fn load(api: &Api) -> Result<i64, crate::storage::StorageError> {
    let page = api
        .storage
        .range(CRD_PREFIX.as_bytes(), &prefix_end(CRD_PREFIX), 0, 0)
        .await?;
    for s in &page.items {
        if let Ok(crd) = serde_json::from_slice::<Value>(&s.value) {
            register(api, &crd);
        }
    }
    Ok(page.revision)
}

async fn sync_once(
    api: &Api,
    shutdown: &CancellationToken,
) -> Result<(), crate::storage::StorageError> {
    let rev = load(api).await?;
    let mut watch = api.storage.watch(CRD_PREFIX, false, rev + 1).await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = watch.next() => m?,
        };
        match msg {
            Some(WatchMessage::Events(events)) => {
                for ev in events {
                    match ev {
                        WatchEvent::Put { current, .. } => {
                            if let Ok(crd) = serde_json::from_slice::<Value>(&current.value) {
                                register(api, &crd);
                            }
                        }
                        WatchEvent::Delete { key, .. } => {
                            api.registry
                                .remove_custom(key.trim_start_matches(CRD_PREFIX));
                        }
                    }
                }
            }
            Some(WatchMessage::Progress(_)) => {}
            Some(WatchMessage::Compacted(_)) | None => {
                return Err(crate::storage::StorageError::Compacted(0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn widget() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                     "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]},
                    {"name": "v1beta1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    }

    #[test]
    fn served_versions_become_resources() {
        let crd = widget();
        assert!(validate(&crd).is_empty(), "{:?}", validate(&crd));
        let rs = resources(&crd);
        assert_eq!(rs.len(), 1);
        let r = &rs[0];
        assert_eq!(
            (
                r.group.as_str(),
                r.version.as_str(),
                r.plural.as_str(),
                r.singular.as_str()
            ),
            ("example.com", "v1", "widgets", "widget")
        );
        assert_eq!(r.storage_prefix, "/registry/example.com/widgets");
        assert!(r.has(Subresource::Status) && r.has(Subresource::Scale));
        assert_eq!(
            r.custom.as_ref().unwrap().columns[0].json_path,
            ".spec.size"
        );
        let st = status(&crd, None, "2026-01-01T00:00:00Z");
        assert_eq!(st["acceptedNames"]["listKind"], "WidgetList");
        assert_eq!(st["storedVersions"], json!(["v1"]));
        assert_eq!(st["conditions"][1]["type"], "Established");
    }

    #[test]
    fn bad_crds_are_refused() {
        let mut crd = widget();
        crd["metadata"]["name"] = json!("wrong");
        crd["spec"]["versions"][1]["storage"] = json!(true);
        let causes = validate(&crd);
        assert_eq!(causes.len(), 2, "{causes:?}");
    }
}
