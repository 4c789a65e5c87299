//! Writes: create (with `generateName` retries), update (optimistic concurrency, status split, generation),
//! patch (read, apply, guarded write, retried on conflict) and server-side apply; every write records its
//! field manager in `metadata.managedFields`.

use crate::admission::Operation;
use hyper::Response;
use serde_json::Value;

use super::subresource::View;
use super::{Body, Target, decode_object, json_response, to_output, to_stored};
use crate::api::Api;
use crate::managed::{self, Writer};
use crate::meta::{meta_str, metadata_mut};
use crate::status::{ApiError, Cause};
use crate::storage::{Guarded, Stored};
use crate::strategy;

/// How many times a write that lost a race without a client precondition is retried.
const RETRIES: usize = 16;

/// Checks the body's `apiVersion` and `kind` against the endpoint, filling them in when absent (as upstream's
/// decoder defaults them from the request's resource).
fn check_type(target: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let info = &target.info;
    if obj
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj["kind"] = Value::from(info.kind.as_str());
    }
    if obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj["apiVersion"] = Value::from(info.api_version());
    }
    let kind = obj["kind"].as_str().unwrap_or("");
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    if api_version != info.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            info.api_version()
        )));
    }
    if kind != info.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            info.kind
        )));
    }
    Ok(())
}

/// The paths of keys a JSON body repeats within one object (`spec.containers[0].image`), as upstream's
/// strict JSON decoding reports them. Bodies that are not JSON have none (YAML duplicates fail to decode).
pub fn duplicate_fields(content_type: &str, body: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;

    struct Walk<'a> {
        path: String,
        out: &'a RefCell<Vec<String>>,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.path.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.path)
                };
                if !seen.insert(key) {
                    self.out.borrow_mut().push(path.clone());
                }
                map.next_value_seed(Walk {
                    path,
                    out: self.out,
                })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut i = 0;
            while seq
                .next_element_seed(Walk {
                    path: format!("{}[{i}]", self.path),
                    out: self.out,
                })?
                .is_some()
            {
                i += 1;
            }
            Ok(())
        }
    }

    let json = matches!(content_type, "application/json" | "" | "*/*")
        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !json {
        return Vec::new();
    }
    let out = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Walk {
        path: String::new(),
        out: &out,
    };
    if seed.deserialize(&mut de).is_err() {
        return Vec::new();
    }
    out.into_inner()
}

/// Unknown and duplicate fields under `fieldValidation` (default `Warn`): `Strict` fails the request as
/// upstream's strict decoding does; otherwise unknown fields are dropped (as decoding into the typed object
/// drops them) and the last of duplicates wins, with a warning for the `Warning` header under `Warn`.
pub fn field_validation(
    target: &Target,
    obj: &mut Value,
    duplicates: &[String],
) -> Result<Vec<String>, ApiError> {
    let mode = target
        .query
        .get("fieldValidation")
        .filter(|m| !m.is_empty())
        .unwrap_or("Warn");
    if !matches!(mode, "Ignore" | "Warn" | "Strict") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", not {mode:?}"
        )));
    }
    let info = &target.info;
    let duplicated = duplicates.iter().map(|p| format!("duplicate field {p:?}"));
    if let Some(custom) = &info.custom {
        // Custom resources: the CRD's schema decides what is unknown; unknown fields are pruned.
        let mut pruned = obj.clone();
        let unknown: Vec<String> = duplicated
            .chain(
                crate::crd_schema::prune(&custom.schema, &mut pruned, true)
                    .iter()
                    .map(|p| format!("unknown field {p:?}")),
            )
            .collect();
        if mode == "Strict" && !unknown.is_empty() {
            return Err(strict_error(info, &unknown));
        }
        *obj = pruned;
        return Ok(if mode == "Warn" { unknown } else { Vec::new() });
    }
    let def = crate::schema::definition(&info.group, &info.version, &info.kind);
    let catalog = crate::schema::catalog();
    if mode == "Ignore" {
        catalog.prune_unknown(&def, obj, true);
        return Ok(Vec::new());
    }
    let unknown: Vec<String> = duplicated
        .chain(
            catalog
                .unknown_fields(&def, obj, true)
                .iter()
                .map(|p| format!("unknown field {p:?}")),
        )
        .collect();
    if mode == "Strict" && !unknown.is_empty() {
        return Err(strict_error(info, &unknown));
    }
    catalog.prune_unknown(&def, obj, true);
    Ok(unknown)
}

/// Upstream's strict decoding error for unknown fields.
fn strict_error(info: &crate::resources::ResourceInfo, unknown: &[String]) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        unknown.join(", "),
        kind = info.kind,
        version = info.version,
    ))
}

/// Adds `Warning: 299 - "…"` headers.
pub fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// Ensures the object's namespace matches the request's (filling it in when empty).
fn check_namespace(target: &Target, obj: &mut Value) -> Result<(), ApiError> {
    let meta = metadata_mut(obj);
    let body_ns = meta
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match target.namespace() {
        Some(ns) => {
            if body_ns.is_empty() {
                meta.insert("namespace".into(), ns.into());
            } else if body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        None => {
            if !target.info.namespaced {
                meta.remove("namespace");
            }
        }
    }
    Ok(())
}

/// The namespace must exist and not be terminating (upstream's NamespaceLifecycle admission).
async fn check_namespace_lifecycle(api: &Api, target: &Target, name: &str) -> Result<(), ApiError> {
    let Some(ns) = target.namespace() else {
        return Ok(());
    };
    let Some(stored) = api
        .storage
        .get(&format!("/registry/namespaces/{ns}"))
        .await?
    else {
        return Err(ApiError::not_found("namespaces", "", ns));
    };
    let obj = to_output(&stored)?;
    if obj["metadata"].get("deletionTimestamp").is_some() || obj["status"]["phase"] == "Terminating"
    {
        let mut err = ApiError::forbidden(
            &target.info.plural,
            &target.info.group,
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        );
        err.details = Some(serde_json::json!({
            "name": name,
            "group": target.info.group,
            "kind": target.info.plural,
            "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}],
        }));
        return Err(err);
    }
    Ok(())
}

/// The subresource name a view writes through, for managed fields.
fn subresource_name(view: View) -> &'static str {
    match view {
        View::Main => "",
        View::Status => "status",
        View::Scale => "scale",
        View::Finalize => "finalize",
    }
}

/// An options error as upstream's (`PatchOptions.meta.k8s.io "" is invalid: …`).
fn options_invalid(kind: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(kind, "meta.k8s.io", "", causes)
}

/// The field manager of a write: `fieldManager`, else the first segment of the client's User-Agent.
fn field_manager(target: &Target, options: &str) -> Result<String, ApiError> {
    if let Some(m) = target.query.get("fieldManager").filter(|m| !m.is_empty()) {
        let mut causes = Vec::new();
        if m.len() > managed::MAX_MANAGER_LEN {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                message: format!(
                    "Too long: may not be more than {} bytes",
                    managed::MAX_MANAGER_LEN
                ),
                field: "fieldManager".into(),
            });
        }
        if let Some((i, c)) = m.char_indices().find(|(_, c)| c.is_control()) {
            causes.push(Cause::invalid(
                "fieldManager",
                &Value::from(m),
                &format!("invalid character U+{:04X} (at position {i})", c as u32),
            ));
        }
        if !causes.is_empty() {
            return Err(options_invalid(options, causes));
        }
        return Ok(m.to_string());
    }
    let agent = target.user_agent.split('/').next().unwrap_or("");
    let mut end = agent.len().min(managed::MAX_MANAGER_LEN);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    Ok(agent[..end].to_string())
}

pub async fn create(
    api: &Api,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let manager = field_manager(target, "CreateOptions")?;
    let mut obj = decode_object(content_type, body)?;
    check_type(target, &mut obj)?;
    let warnings = field_validation(target, &mut obj, &duplicate_fields(content_type, body))?;
    let mut obj = crate::convert::to_storage_form(&target.info, obj);
    check_namespace(target, &mut obj)?;
    create_object(api, target, obj, &warnings, Some(&manager)).await
}

/// Stores a new object (already checked against the endpoint). `manager` records an Update entry in its
/// managed fields; `None` when server-side apply already did.
async fn create_object(
    api: &Api,
    target: &Target,
    mut obj: Value,
    warnings: &[String],
    manager: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let info = &target.info;
    let generate = meta_str(&obj, "name").is_none_or(str::is_empty)
        && meta_str(&obj, "generateName").is_some_and(|g| !g.is_empty());
    {
        let meta = metadata_mut(&mut obj);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), crate::meta::new_uid().into());
        meta.insert(
            "creationTimestamp".into(),
            crate::meta::now_rfc3339().into(),
        );
    }
    strategy::prepare_create(info, &mut obj);
    crate::admission::mutate(api, target, Operation::Create, &mut obj).await?;
    check_depth(&obj)?;
    if let Some(manager) = manager {
        let writer = Writer {
            info,
            manager,
            subresource: "",
        };
        managed::track_update(&writer, None, &mut obj);
    }
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    check_namespace_lifecycle(api, target, &name).await?;
    for attempt in 0..8 {
        if generate {
            let base = meta_str(&obj, "generateName").unwrap_or("").to_string();
            let name = format!("{base}{}", crate::meta::name_suffix());
            metadata_mut(&mut obj).insert("name".into(), name.into());
        }
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        let causes = strategy::validate_create(info, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&info.kind, &info.group, &name, causes));
        }
        let mut warnings = warnings.to_vec();
        warnings.extend(
            crate::admission::admit(api, target, Operation::Create, None, Some(&obj)).await?,
        );
        let warnings = warnings.as_slice();
        let hooks = api.before_create(info, &mut obj).await?;
        if target.dry_run() {
            let served = crate::convert::to_served_form(info, obj);
            return Ok(with_warnings(json_response(201, &served), warnings));
        }
        let key = info.key(target.namespace(), &name);
        match api.storage.create(&key, to_stored(&obj)).await? {
            Guarded::Done(rev) => {
                super::set_resource_version(&mut obj, rev);
                api.after_write(info, &obj);
                if let Some(ns) = target.namespace() {
                    let force = info.group.is_empty() && info.plural == "resourcequotas";
                    crate::admission::resource_quota::refresh(api, ns, force).await;
                }
                let served = crate::convert::to_served_form(info, obj);
                return Ok(with_warnings(json_response(201, &served), warnings));
            }
            Guarded::Changed(_) => {
                api.undo_create(hooks).await;
                if generate && attempt < 7 {
                    continue;
                }
                return Err(ApiError::already_exists(&info.plural, &info.group, &name));
            }
        }
    }
    Err(ApiError::internal("generateName retries exhausted"))
}

/// How deep an object may nest. Stored objects are parsed again on every read, with serde_json's limit of
/// 128 levels; managed fields repeat the object's nesting a few levels down.
const MAX_DEPTH: usize = 100;

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Refuses an object nested deeper than `MAX_DEPTH`: it could be stored but not read back.
fn check_depth(obj: &Value) -> Result<(), ApiError> {
    if depth(obj) > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the object is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    Ok(())
}

/// Carries the system-owned metadata of the stored object into an update.
fn keep_system_metadata(old: &Value, new: &mut Value) {
    let old_meta = old.get("metadata").cloned().unwrap_or(Value::Null);
    let meta = metadata_mut(new);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(f) {
            Some(v) => {
                meta.insert(f.into(), v.clone());
            }
            None => {
                meta.remove(f);
            }
        }
    }
    meta.remove("selfLink");
}

/// Validates and stores `new` (already in the resource's shape) over `current`. Returns the response, or
/// `None` when the stored object changed underneath (the caller retries). `manager` records the write in
/// the managed fields; `None` when server-side apply already did.
async fn commit(
    api: &Api,
    target: &Target,
    current: &Stored,
    mut new: Value,
    view: View,
    manager: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let info = &target.info;
    let old = to_output(current)?;
    keep_system_metadata(&old, &mut new);
    let name = target.name().to_string();
    // Server-side apply computed the managed fields already; the status split must not undo them.
    let applied_fields = manager
        .is_none()
        .then(|| new["metadata"].get("managedFields").cloned())
        .flatten();
    match view {
        View::Status => strategy::prepare_status_update(&old, &mut new),
        View::Finalize => strategy::prepare_finalize_update(&old, &mut new),
        View::Main | View::Scale => strategy::prepare_update(info, &old, &mut new),
    }
    if manager.is_none() {
        match applied_fields {
            Some(fields) => metadata_mut(&mut new).insert("managedFields".into(), fields),
            None => metadata_mut(&mut new).remove("managedFields"),
        };
    }
    check_depth(&new)?;
    if let Some(manager) = manager {
        let writer = Writer {
            info,
            manager,
            subresource: subresource_name(view),
        };
        managed::track_update(&writer, Some(&old), &mut new);
    }
    let causes = strategy::validate_update(info, &old, &new);
    if !causes.is_empty() {
        return Err(ApiError::invalid(&info.kind, &info.group, &name, causes));
    }
    // (Warnings of validating admission on updates are not returned yet.)
    crate::admission::admit(api, target, Operation::Update, Some(&old), Some(&new)).await?;
    let pending = api.before_update(info, &old, &mut new).await?;
    // Same resourceVersion on both sides for the no-op comparison.
    super::set_resource_version(&mut new, current.mod_revision);
    if new == old {
        api.update_abandoned(pending).await;
        return Ok(Some(old));
    }
    if target.dry_run() {
        api.update_abandoned(pending).await;
        return Ok(Some(new));
    }
    let deleting = new["metadata"].get("deletionTimestamp").is_some();
    let finalizers_left = new["metadata"]
        .get("finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    // A pod waits for its kubelet unless its grace period is over (upstream's shouldDeleteDuringUpdate).
    let pod_waits = info.kind == "Pod"
        && new["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_none_or(|g| g > 0);
    if deleting && !finalizers_left && !pod_waits && info.kind != "Namespace" {
        // The last finalizer is gone: the object is deleted now.
        return match api.storage.delete(&current.key, current.mod_revision).await {
            Ok(Guarded::Done(rev)) => {
                // Gone: both what the old object held (dropped) and what the new one holds are free.
                api.update_stored(pending).await;
                api.after_delete(info, &new).await;
                super::set_resource_version(&mut new, rev);
                Ok(Some(new))
            }
            Ok(Guarded::Changed(_)) => {
                api.update_abandoned(pending).await;
                Ok(None)
            }
            Err(err) => {
                api.update_abandoned(pending).await;
                Err(err.into())
            }
        };
    }
    match api
        .storage
        .update(&current.key, to_stored(&new), current.mod_revision)
        .await
    {
        Ok(Guarded::Done(rev)) => {
            api.update_stored(pending).await;
            super::set_resource_version(&mut new, rev);
            api.after_write(info, &new);
            if let Some(ns) = target.namespace() {
                let force = info.group.is_empty() && info.plural == "resourcequotas";
                crate::admission::resource_quota::refresh(api, ns, force).await;
            }
            Ok(Some(new))
        }
        Ok(Guarded::Changed(_)) => {
            api.update_abandoned(pending).await;
            Ok(None)
        }
        Err(err) => {
            api.update_abandoned(pending).await;
            Err(err.into())
        }
    }
}

/// PUT of the main resource, `/status` or `/scale` (`view`).
pub async fn update(
    api: &Api,
    target: &Target,
    content_type: &str,
    body: &[u8],
    view: Option<View>,
) -> Result<Response<Body>, ApiError> {
    let view = view.unwrap_or(View::Main);
    let manager = field_manager(target, "UpdateOptions")?;
    let mut obj = decode_object(content_type, body)?;
    let mut warnings = Vec::new();
    if view != View::Scale {
        check_type(target, &mut obj)?;
        warnings = field_validation(target, &mut obj, &duplicate_fields(content_type, body))?;
        check_namespace(target, &mut obj)?;
    }
    let body_name = meta_str(&obj, "name").unwrap_or("").to_string();
    if body_name != target.name() {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({})",
            target.name()
        )));
    }
    let precondition = meta_str(&obj, "resourceVersion")
        .filter(|rv| !rv.is_empty())
        .map(str::to_string);
    for _ in 0..RETRIES {
        let current = api
            .storage
            .get(&target.key())
            .await?
            .ok_or_else(|| target.not_found())?;
        if let Some(rv) = &precondition
            && *rv != current.mod_revision.to_string()
        {
            return Err(target.modified());
        }
        let old = to_output(&current)?;
        let new = view.apply_body(&target.info, &old, obj.clone())?;
        match commit(api, target, &current, new, view, Some(&manager)).await? {
            Some(stored) => {
                let resp = json_response(200, &view.present(&target.info, &stored)?);
                return Ok(with_warnings(resp, &warnings));
            }
            None if precondition.is_some() => {
                return Err(target.modified());
            }
            None => continue,
        }
    }
    Err(target.modified())
}

/// PATCH of the main resource, `/status` or `/scale`.
pub async fn patch(
    api: &Api,
    target: &Target,
    content_type: &str,
    body: &[u8],
    view: Option<View>,
) -> Result<Response<Body>, ApiError> {
    let view = view.unwrap_or(View::Main);
    let kind = crate::patch::PatchKind::from_content_type(content_type)?;
    if kind == crate::patch::PatchKind::Apply {
        return apply(api, target, body, view).await;
    }
    if target.query.get("force").is_some() {
        return Err(options_invalid(
            "PatchOptions",
            vec![Cause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )],
        ));
    }
    let manager = field_manager(target, "PatchOptions")?;
    for _ in 0..RETRIES {
        let current = api
            .storage
            .get(&target.key())
            .await?
            .ok_or_else(|| target.not_found())?;
        let old = to_output(&current)?;
        let shown = view.present(&target.info, &old)?;
        let def = match view {
            View::Scale => crate::schema::definition("autoscaling", "v1", "Scale"),
            View::Main | View::Status | View::Finalize => crate::schema::definition(
                &target.info.group,
                &target.info.version,
                &target.info.kind,
            ),
        };
        let mut patched = crate::patch::apply(kind, &shown, body, Some(&def))?;
        let mut warnings = Vec::new();
        if view != View::Scale {
            check_type(target, &mut patched)?;
            let duplicates = match kind {
                crate::patch::PatchKind::Json => Vec::new(),
                _ => duplicate_fields("application/json", body),
            };
            warnings = field_validation(target, &mut patched, &duplicates)?;
        }
        // A resourceVersion in the patch is a precondition.
        let patched_rv = meta_str(&patched, "resourceVersion").map(str::to_string);
        let precondition = patched_rv.filter(|rv| *rv != current.mod_revision.to_string());
        if precondition.is_some() {
            return Err(target.modified());
        }
        if meta_str(&patched, "name").is_some_and(|n| n != target.name()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                meta_str(&patched, "name").unwrap_or(""),
                target.name()
            )));
        }
        check_namespace(target, &mut patched)?;
        let new = view.apply_body(&target.info, &old, patched)?;
        if let Some(stored) = commit(api, target, &current, new, view, Some(&manager)).await? {
            let resp = json_response(200, &view.present(&target.info, &stored)?);
            return Ok(with_warnings(resp, &warnings));
        }
    }
    Err(target.modified())
}

/// Server-side apply (`application/apply-patch+yaml`): merges the configuration into the live object (or
/// creates it), with field ownership and conflicts as upstream.
async fn apply(
    api: &Api,
    target: &Target,
    body: &[u8],
    view: View,
) -> Result<Response<Body>, ApiError> {
    let manager = target.query.get("fieldManager").unwrap_or("");
    if manager.is_empty() {
        return Err(options_invalid(
            "PatchOptions",
            vec![Cause {
                reason: "FieldValueRequired",
                message: "Required value: is required for apply patch".into(),
                field: "fieldManager".into(),
            }],
        ));
    }
    let manager = field_manager(target, "PatchOptions")?;
    let force = match target.query.get("force") {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid value {other:?} for force: expected true or false"
            )));
        }
    };
    if view == View::Scale {
        return Err(ApiError::bad_request(
            "server-side apply through the scale subresource is not supported; apply spec.replicas to the resource itself",
        ));
    }
    let mut config = decode_object("application/yaml", body)?;
    for (field, what) in [("kind", "Kind"), ("apiVersion", "Version")] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(format!(
                "Object '{what}' is missing in '{}'",
                String::from_utf8_lossy(body).trim()
            )));
        }
    }
    check_type(target, &mut config)?;
    if config["metadata"].get("managedFields").is_some() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    match meta_str(&config, "name") {
        None | Some("") => {
            metadata_mut(&mut config).insert("name".into(), target.name().into());
        }
        Some(n) if n != target.name() => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                target.name()
            )));
        }
        Some(_) => {}
    }
    check_namespace(target, &mut config)?;
    let warnings = field_validation(
        target,
        &mut config,
        &duplicate_fields("application/apply-patch+yaml", body),
    )?;
    let config = crate::convert::to_storage_form(&target.info, config);
    let precondition = meta_str(&config, "resourceVersion")
        .filter(|rv| !rv.is_empty())
        .map(str::to_string);
    let writer = Writer {
        info: &target.info,
        manager: &manager,
        subresource: subresource_name(view),
    };
    for _ in 0..RETRIES {
        let Some(current) = api.storage.get(&target.key()).await? else {
            if view != View::Main || precondition.is_some() {
                return Err(target.not_found());
            }
            let obj = managed::apply(&writer, None, &config, force)?;
            match create_object(api, target, obj, &warnings, None).await {
                Err(err) if err.reason == "AlreadyExists" => continue,
                other => return other,
            }
        };
        if let Some(rv) = &precondition
            && *rv != current.mod_revision.to_string()
        {
            return Err(target.modified());
        }
        let old = to_output(&current)?;
        let new = managed::apply(&writer, Some(&old), &config, force)?;
        if let Some(stored) = commit(api, target, &current, new, view, None).await? {
            let resp = json_response(200, &view.present(&target.info, &stored)?);
            return Ok(with_warnings(resp, &warnings));
        }
    }
    Err(target.modified())
}

#[cfg(test)]
mod tests {
    use super::duplicate_fields;

    #[test]
    fn duplicate_keys_are_found_with_their_paths() {
        let body = br#"{"spec": {"replicas": 1, "replicas": 2, "template": {"spec": {"containers": [{"name": "a", "image": "x", "image": "y"}]}}}}"#;
        assert_eq!(
            duplicate_fields("application/json", body),
            ["spec.replicas", "spec.template.spec.containers[0].image"]
        );
        assert!(
            duplicate_fields("application/json", br#"{"a": {"b": 1}, "c": {"b": 2}}"#).is_empty()
        );
        assert!(duplicate_fields("application/yaml", b"a: 1\n").is_empty());
        assert!(duplicate_fields("application/json", b"{").is_empty());
    }
}
