//! Field management as upstream's apiserver does it: `metadata.managedFields` recorded on every write
//! (which manager set which fields, by Apply or Update), and server-side apply (merge the configuration,
//! prune what the applier dropped, refuse to take fields other managers own unless forced).

pub mod fieldset;
pub mod typed;

use std::collections::HashMap;

use serde_json::{Map, Value, json};

pub use fieldset::Set;
use typed::{Comparison, Node, Typed};

use crate::resources::{ResourceInfo, Subresource};
use crate::status::ApiError;

/// kubectl's client-side apply annotation, kept in step by `kubectl apply --server-side`.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Upstream keeps at most this many Update entries; older ones merge into `ancient-changes`.
const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager that owns an object's fields when it is first applied to and has no managed fields.
const BEFORE_FIRST_APPLY: &str = "before-first-apply";
/// The manager older Update entries are folded into.
const ANCIENT_CHANGES: &str = "ancient-changes";
/// The longest field manager name upstream accepts.
pub const MAX_MANAGER_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: Set,
}

impl Entry {
    /// Upstream's manager identity: appliers are one manager across versions; updaters are per version.
    fn same_as(&self, manager: &str, operation: Operation, api_version: &str, sub: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == sub
            && (operation == Operation::Apply || self.api_version == api_version)
    }

    /// The manager identity as a key: (manager, operation, apiVersion for updaters, subresource).
    fn identity(&self) -> (String, Operation, String, String) {
        let version = match self.operation {
            Operation::Apply => String::new(),
            Operation::Update => self.api_version.clone(),
        };
        (
            self.manager.clone(),
            self.operation,
            version,
            self.subresource.clone(),
        )
    }

    /// How conflict messages name the manager (upstream's `printManager`).
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// Reads `metadata.managedFields`.
pub fn decode(obj: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = obj.get("metadata").and_then(|m| m.get("managedFields")) else {
        return Ok(Vec::new());
    };
    if list.is_null() {
        return Ok(Vec::new());
    }
    let Some(items) = list.as_array() else {
        return Err("managedFields must be a list".into());
    };
    let mut out: Vec<Entry> = Vec::with_capacity(items.len());
    let mut seen: HashMap<(String, Operation, String, String), usize> = HashMap::new();
    for item in items {
        let s = |k: &str| {
            item.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let operation = match s("operation").as_str() {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            other => return Err(format!("operation must be Apply or Update, not {other:?}")),
        };
        let fields_type = s("fieldsType");
        if fields_type != "FieldsV1" {
            return Err(format!("fieldsType must be FieldsV1, not {fields_type:?}"));
        }
        let set = match item.get("fieldsV1") {
            Some(v) => Set::from_fields_v1(v)?,
            None => Set::new(),
        };
        let entry = Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            time: item.get("time").and_then(Value::as_str).map(str::to_string),
            subresource: s("subresource"),
            set,
        };
        // The same manager twice: the later entry wins, as upstream's decoding into a map.
        match seen.entry(entry.identity()) {
            std::collections::hash_map::Entry::Occupied(at) => out[*at.get()] = entry,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(entry);
            }
        }
    }
    Ok(out)
}

/// Writes `metadata.managedFields` in upstream's order (Apply before Update, then by time and name).
pub fn encode(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation.as_str(),
            a.time.as_deref().unwrap_or(""),
            &a.manager,
        )
            .cmp(&(
                b.operation.as_str(),
                b.time.as_deref().unwrap_or(""),
                &b.manager,
            ))
            .then_with(|| a.api_version.cmp(&b.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    let meta = crate::meta::metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
        return;
    }
    let list: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), e.manager.into());
            m.insert("operation".into(), e.operation.as_str().into());
            m.insert("apiVersion".into(), e.api_version.into());
            if let Some(t) = e.time {
                m.insert("time".into(), t.into());
            }
            m.insert("fieldsType".into(), "FieldsV1".into());
            m.insert("fieldsV1".into(), e.set.to_fields_v1());
            if !e.subresource.is_empty() {
                m.insert("subresource".into(), e.subresource.into());
            }
            Value::Object(m)
        })
        .collect();
    meta.insert("managedFields".into(), Value::Array(list));
}

/// Who writes, through which endpoint.
pub struct Writer<'a> {
    pub info: &'a ResourceInfo,
    pub manager: &'a str,
    /// `""`, `status` or `scale`.
    pub subresource: &'a str,
}

impl Writer<'_> {
    fn api_version(&self) -> String {
        self.info.api_version()
    }

    /// Runs `f` with the schema of the resource.
    fn with_schema<R>(&self, f: impl FnOnce(Typed<'_>, Node<'_>) -> R) -> R {
        let typed = Typed {
            catalog: crate::schema::catalog(),
        };
        match &self.info.custom {
            Some(custom) => f(typed, Node::Crd(&custom.schema, true)),
            None => {
                let def = crate::schema::definition(
                    &self.info.group,
                    &self.info.version,
                    &self.info.kind,
                );
                if typed.catalog.get(&def).is_some() {
                    f(typed, Node::Type(&def))
                } else {
                    f(typed, Node::Untyped)
                }
            }
        }
    }

    /// Fields the endpoint resets (upstream's reset fields): `status` through the main resource of a kind
    /// with a status subresource, `spec` through `/status`.
    fn reset(&self) -> Set {
        let mut s = Set::new();
        match self.subresource {
            "" if self.info.has(Subresource::Status) => s.insert(&["f:status".to_string()]),
            "status" => s.insert(&["f:spec".to_string()]),
            _ => {}
        }
        s
    }
}

/// System fields nobody owns (upstream's stripMeta), matched exactly.
fn strip() -> Set {
    let mut s = Set::new();
    s.insert(&["f:apiVersion".to_string()]);
    s.insert(&["f:kind".to_string()]);
    s.insert(&["f:metadata".to_string()]);
    for f in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        s.insert(&["f:metadata".to_string(), format!("f:{f}")]);
    }
    s
}

/// Paths a comparison skips: bookkeeping that changes on every write.
fn compare_ignore(reset: &Set) -> Set {
    let mut s = reset.clone();
    for f in ["managedFields", "resourceVersion", "generation"] {
        s.insert(&["f:metadata".to_string(), format!("f:{f}")]);
    }
    s
}

fn compare(
    typed: Typed<'_>,
    root: Node<'_>,
    old: Option<&Value>,
    new: &Value,
    ignore: &Set,
) -> Comparison {
    let mut out = Comparison::default();
    let empty = json!({});
    typed.compare(
        root,
        Some(old.unwrap_or(&empty)),
        Some(new),
        Some(ignore),
        &mut Vec::new(),
        &mut out,
    );
    out
}

/// Records an Update by `writer` from `old` (`None` on create) to `new`, in `new`'s `managedFields`.
///
/// As upstream: managed fields sent in `new` (through the main resource) replace the stored ones, so
/// clients can edit them; `[{}]` clears them; otherwise the stored ones carry over.
pub fn track_update(writer: &Writer<'_>, old: Option<&Value>, new: &mut Value) {
    let supplied = new
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .cloned();
    let mut entries = None;
    if writer.subresource.is_empty()
        && let Some(list) = &supplied
    {
        // Only empty entries: the client clears managed fields (this write is then recorded alone).
        entries = if list
            .iter()
            .all(|e| e.as_object().is_some_and(Map::is_empty))
        {
            Some(Vec::new())
        } else {
            decode(new).ok()
        };
    }
    let mut entries = entries
        .or_else(|| old.and_then(|o| decode(o).ok()))
        .unwrap_or_default();
    let api_version = writer.api_version();
    writer.with_schema(|typed, root| {
        let reset = writer.reset();
        let cmp = compare(typed, root, old, new, &compare_ignore(&reset));
        let changed = cmp
            .changed()
            .recursive_difference(&reset)
            .difference(&strip());
        for e in &mut entries {
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        if !changed.is_empty() {
            let now = Some(crate::meta::now_rfc3339());
            match entries.iter_mut().find(|e| {
                e.same_as(
                    writer.manager,
                    Operation::Update,
                    &api_version,
                    writer.subresource,
                )
            }) {
                Some(e) => {
                    e.set.union_with(&changed);
                    e.time = now;
                }
                None => entries.push(Entry {
                    manager: writer.manager.to_string(),
                    operation: Operation::Update,
                    api_version: api_version.clone(),
                    time: now,
                    subresource: writer.subresource.to_string(),
                    set: changed,
                }),
            }
        }
    });
    entries.retain(|e| !e.set.is_empty());
    cap_updates(&mut entries);
    encode(new, entries);
}

/// Folds the oldest Update entries into `ancient-changes` (one per API version) until at most
/// `MAX_UPDATE_MANAGERS` remain, as upstream's capManagersManager: oldest first, the first entry of a version
/// becomes the bucket when a second one of that version is folded into it.
fn cap_updates(entries: &mut Vec<Entry>) {
    let mut updaters: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == Operation::Update)
        .collect();
    if updaters.len() <= MAX_UPDATE_MANAGERS {
        return;
    }
    updaters.sort_by(|&a, &b| {
        (
            entries[a].time.as_deref().unwrap_or(""),
            &entries[a].manager,
        )
            .cmp(&(
                entries[b].time.as_deref().unwrap_or(""),
                &entries[b].manager,
            ))
    });
    let mut slots: Vec<Option<Entry>> = std::mem::take(entries).into_iter().map(Some).collect();
    let is_bucket = |e: &Entry, version: &str| {
        e.manager == ANCIENT_CHANGES
            && e.operation == Operation::Update
            && e.api_version == version
            && e.subresource.is_empty()
    };
    let mut length = updaters.len();
    let mut first_of_version: HashMap<String, usize> = HashMap::new();
    for &i in &updaters {
        if length <= MAX_UPDATE_MANAGERS {
            break;
        }
        let Some(current) = slots[i].clone() else {
            continue;
        };
        let version = current.api_version.clone();
        let Some(&first) = first_of_version.get(&version) else {
            first_of_version.insert(version, i);
            continue;
        };
        let bucket = match slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|e| is_bucket(e, &version)))
        {
            Some(b) => b,
            None => {
                // The first entry of this version becomes the bucket.
                if let Some(e) = slots[first].as_mut() {
                    e.manager = ANCIENT_CHANGES.into();
                    e.subresource.clear();
                }
                first
            }
        };
        if bucket == i {
            continue;
        }
        if let Some(b) = slots[bucket].as_mut() {
            b.set.union_with(&current.set);
            // The merged update is the more recent one.
            b.time = current.time.clone();
        }
        slots[i] = None;
        length -= 1;
    }
    *entries = slots.into_iter().flatten().collect();
}

/// Server-side apply of `config` by `writer` over `live` (`None` when the object does not exist yet).
/// Returns the object to store, with its managed fields; a 409 names the conflicts unless `force`.
pub fn apply(
    writer: &Writer<'_>,
    live: Option<&Value>,
    config: &Value,
    force: bool,
) -> Result<Value, ApiError> {
    let mut entries = live.and_then(|l| decode(l).ok()).unwrap_or_default();
    let api_version = writer.api_version();
    if entries.is_empty()
        && let Some(live) = live
    {
        // An object nobody tracked yet: its current fields belong to `before-first-apply`.
        let mut tracked = live.clone();
        let first = Writer {
            info: writer.info,
            manager: BEFORE_FIRST_APPLY,
            subresource: writer.subresource,
        };
        track_update(&first, None, &mut tracked);
        entries = decode(&tracked).unwrap_or_default();
    }
    writer.with_schema(|typed, root| {
        typed
            .check_config(root, config, &mut Vec::new())
            .map_err(|e| {
                let info = writer.info;
                ApiError::bad_request(format!(
                    "failed to create typed patch object ({}/{}, Kind={}): {e}",
                    info.group, info.version, info.kind
                ))
            })?;
        let reset = writer.reset();
        let mut merged = typed.merge(root, live, config);
        let mut applied = Set::new();
        typed.to_set(root, config, &mut applied);
        let applied = applied.recursive_difference(&reset).difference(&strip());
        let mine = entries.iter().position(|e| {
            e.same_as(
                writer.manager,
                Operation::Apply,
                &api_version,
                writer.subresource,
            )
        });
        let (last, previous_time) = match mine {
            Some(i) => {
                let e = entries.remove(i);
                (Some(e.set), e.time)
            }
            None => (None, None),
        };
        if let Some(last) = last.as_ref().filter(|l| !l.is_empty()) {
            let mut keep = applied.clone();
            for e in &entries {
                keep.union_with(&e.set);
            }
            typed.prune(root, &mut merged, last, Some(&keep), false);
        }
        let cmp = compare(typed, root, live, &merged, &compare_ignore(&reset));
        let changed = cmp.changed().recursive_difference(&reset);
        let mut conflicts: Vec<(String, Vec<String>)> = Vec::new();
        for e in &entries {
            for path in e.set.intersection(&changed).paths() {
                conflicts.push((e.describe(), path));
            }
        }
        if !force && !conflicts.is_empty() && writer.manager == "kubectl" {
            // Moving from client-side apply: fields kubectl last applied client-side, still holding the
            // values it applied, are kubectl's to take (upstream's lastAppliedManager).
            if let Some(allowed) = live.and_then(|l| allowed_from_last_applied(typed, root, l)) {
                conflicts.retain(|(_, p)| {
                    let path: Vec<&str> = p.iter().map(String::as_str).collect();
                    !allowed.has(&path)
                });
            }
        }
        if !force && !conflicts.is_empty() {
            return Err(conflict_error(conflicts));
        }
        for e in &mut entries {
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        // The comparison already says whether the object changed (bookkeeping and reset fields aside).
        let changed_object = live.is_none()
            || !(cmp.added.is_empty() && cmp.modified.is_empty() && cmp.removed.is_empty());
        entries.push(Entry {
            manager: writer.manager.to_string(),
            operation: Operation::Apply,
            api_version: api_version.clone(),
            time: if changed_object {
                Some(crate::meta::now_rfc3339())
            } else {
                previous_time
            },
            subresource: writer.subresource.to_string(),
            set: applied,
        });
        entries.retain(|e| !e.set.is_empty());
        cap_updates(&mut entries);
        if writer.manager == "kubectl"
            && merged
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(LAST_APPLIED))
                .is_some()
        {
            // Keep client-side apply's record in step with what kubectl applied server-side.
            let mut record = config.clone();
            if let Some(a) = record
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                a.remove(LAST_APPLIED);
                if a.is_empty() {
                    crate::meta::metadata_mut(&mut record).remove("annotations");
                }
            }
            let text = format!("{record}\n");
            let annotations = crate::meta::metadata_mut(&mut merged)
                .entry("annotations")
                .or_insert_with(|| json!({}));
            if let Some(a) = annotations.as_object_mut() {
                a.insert(LAST_APPLIED.into(), text.into());
                // Upstream drops the record when the annotations would pass their 256 KiB limit.
                let total: usize = a
                    .iter()
                    .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                    .sum();
                if total > 256 * 1024 {
                    a.remove(LAST_APPLIED);
                }
            }
        }
        encode(&mut merged, entries);
        Ok(merged)
    })
}

/// The fields of the live object's last client-side applied configuration that still hold the values
/// applied then.
fn allowed_from_last_applied(typed: Typed<'_>, root: Node<'_>, live: &Value) -> Option<Set> {
    let text = live
        .pointer("/metadata/annotations")?
        .get(LAST_APPLIED)?
        .as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    let mut set = Set::new();
    typed.to_set(root, &last, &mut set);
    let mut cmp = Comparison::default();
    typed.compare(
        root,
        Some(&last),
        Some(live),
        None,
        &mut Vec::new(),
        &mut cmp,
    );
    Some(set.difference(&cmp.modified))
}

/// Upstream's apply conflict: 409 with one `FieldManagerConflict` cause per field.
fn conflict_error(mut conflicts: Vec<(String, Vec<String>)>) -> ApiError {
    conflicts.sort();
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": fieldset::display(p)})
        })
        .collect();
    let message = if conflicts.len() == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0,
            fieldset::display(&conflicts[0].1)
        )
    } else {
        let mut lines = Vec::new();
        let mut current: Option<&str> = None;
        for (m, p) in &conflicts {
            if current != Some(m.as_str()) {
                lines.push(format!("conflicts with {m}:"));
                current = Some(m);
            }
            lines.push(format!("- {}", fieldset::display(p)));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({ "causes": causes })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments() -> std::sync::Arc<ResourceInfo> {
        let reg = crate::resources::Registry::with_builtins();
        reg.get("apps", "v1", "deployments").unwrap()
    }

    fn writer<'a>(info: &'a ResourceInfo, manager: &'a str) -> Writer<'a> {
        Writer {
            info,
            manager,
            subresource: "",
        }
    }

    fn owners(obj: &Value, path: &[&str]) -> Vec<String> {
        decode(obj)
            .unwrap()
            .into_iter()
            .filter(|e| e.set.has(path))
            .map(|e| e.manager)
            .collect()
    }

    #[test]
    fn creates_and_updates_record_their_fields() {
        let info = deployments();
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 1}});
        track_update(&writer(&info, "kubectl-create"), None, &mut obj);
        assert_eq!(owners(&obj, &["f:spec", "f:replicas"]), ["kubectl-create"]);
        assert!(owners(&obj, &["f:metadata", "f:name"]).is_empty());
        let mut next = obj.clone();
        next["spec"]["replicas"] = json!(3);
        track_update(&writer(&info, "kubectl-scale"), Some(&obj), &mut next);
        assert_eq!(owners(&next, &["f:spec", "f:replicas"]), ["kubectl-scale"]);
        assert_eq!(
            owners(&next, &["f:metadata", "f:labels", "f:a"]),
            ["kubectl-create"]
        );
        // `[{}]` clears managed fields.
        let mut cleared = next.clone();
        cleared["metadata"]["managedFields"] = json!([{}]);
        track_update(&writer(&info, "x"), Some(&next), &mut cleared);
        assert!(cleared["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn apply_conflicts_then_forces() {
        let info = deployments();
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 2}});
        let created = apply(&writer(&info, "kubectl"), None, &config, false).unwrap();
        assert_eq!(owners(&created, &["f:spec", "f:replicas"]), ["kubectl"]);
        // Same value from another manager: shared, no conflict.
        let same = apply(&writer(&info, "ci"), Some(&created), &config, false).unwrap();
        assert_eq!(owners(&same, &["f:spec", "f:replicas"]).len(), 2);
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 5}});
        let err = apply(&writer(&info, "ci"), Some(&created), &other, false).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"
        );
        let forced = apply(&writer(&info, "ci"), Some(&created), &other, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        assert_eq!(owners(&forced, &["f:spec", "f:replicas"]), ["ci"]);
        // kubectl drops the label from its configuration: pruned, since nobody else owns it.
        let mut smaller = config.clone();
        smaller["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        smaller["spec"].as_object_mut().unwrap().remove("replicas");
        let pruned = apply(&writer(&info, "kubectl"), Some(&forced), &smaller, false).unwrap();
        assert!(pruned["metadata"].get("labels").is_none());
        assert_eq!(pruned["spec"]["replicas"], 5);
    }

    #[test]
    fn update_managers_conflict_by_version() {
        let info = deployments();
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1, "paused": false}});
        track_update(&writer(&info, "kubectl-edit"), None, &mut obj);
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 4, "paused": true}});
        let err = apply(&writer(&info, "kubectl"), Some(&obj), &config, false).unwrap_err();
        assert!(
            err.message
                .starts_with("Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using apps/v1:\n- .spec.paused\n- .spec.replicas"),
            "{}",
            err.message
        );
        assert_eq!(
            err.details.unwrap()["causes"][0]["reason"],
            "FieldManagerConflict"
        );
    }

    #[test]
    fn the_same_manager_twice_decodes_as_the_later_entry() {
        let obj = json!({"metadata": {"managedFields": [
            {"manager": "m", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:a": {}}},
            {"manager": "m", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:b": {}}},
            {"manager": "m", "operation": "Update", "apiVersion": "v2", "fieldsType": "FieldsV1", "fieldsV1": {"f:c": {}}}]}});
        let entries = decode(&obj).unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries[0].set.has(&["f:b"]) && !entries[0].set.has(&["f:a"]));
        let bad = json!({"metadata": {"managedFields": [{"manager": "m", "operation": "Merge", "fieldsType": "FieldsV1"}]}});
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn untracked_objects_belong_to_before_first_apply() {
        let info = deployments();
        let live = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 2}});
        let err = apply(&writer(&info, "kubectl"), Some(&live), &config, false).unwrap_err();
        assert!(
            err.message.contains("\"before-first-apply\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn update_managers_are_capped() {
        let info = deployments();
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {}}});
        for i in 0..13 {
            let mut next = obj.clone();
            next["metadata"]["labels"][format!("l{i}")] = json!("v");
            track_update(&writer(&info, &format!("m{i:02}")), Some(&obj), &mut next);
            obj = next;
        }
        let entries = decode(&obj).unwrap();
        assert_eq!(entries.len(), MAX_UPDATE_MANAGERS);
        let ancient = entries
            .iter()
            .find(|e| e.manager == ANCIENT_CHANGES)
            .unwrap();
        assert!(ancient.set.has(&["f:metadata", "f:labels", "f:l0"]));
        assert!(ancient.set.has(&["f:metadata", "f:labels", "f:l3"]));
    }
}
