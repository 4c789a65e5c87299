//! DELETE and DELETECOLLECTION: preconditions, propagation finalizers, graceful pod deletion and objects that
//! wait for their finalizers.

use hyper::Response;
use serde_json::{Value, json};

use super::list::{ListOptions, read_list};
use super::{Body, Target, json_response, to_output, to_stored};
use crate::api::Api;
use crate::meta::metadata_mut;
use crate::status::{ApiError, success};
use crate::storage::Guarded;

/// DeleteOptions from the body and query.
struct DeleteOptions {
    grace_period: Option<i64>,
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

impl DeleteOptions {
    fn parse(target: &Target, content_type: &str, body: &[u8]) -> Result<Self, ApiError> {
        let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else if content_type == crate::protobuf::MEDIA_TYPE {
            crate::protobuf::decode(body)?
        } else {
            serde_json::from_slice(body).map_err(|err| {
                ApiError::bad_request(format!("error decoding DeleteOptions: {err}"))
            })?
        };
        let q = &target.query;
        let grace_period =
            match q.get("gracePeriodSeconds") {
                Some(g) => Some(g.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}"))
                })?),
                None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
            };
        let mut propagation = q.get("propagationPolicy").map(str::to_string).or_else(|| {
            body.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        let orphan = q
            .get("orphanDependents")
            .map(|v| v == "true")
            .or_else(|| body.get("orphanDependents").and_then(Value::as_bool));
        if propagation.is_none() && orphan == Some(true) {
            propagation = Some("Orphan".into());
        }
        if let Some(p) = &propagation
            && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
        {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                vec![crate::status::Cause::not_supported(
                    "propagationPolicy",
                    &Value::from(p.as_str()),
                    &["Foreground", "Background", "Orphan", "nil"],
                )],
            ));
        }
        let pre = body.get("preconditions").cloned().unwrap_or(Value::Null);
        let dry_run = target.query.get("dryRun") == Some("All")
            || body["dryRun"]
                .as_array()
                .is_some_and(|d| d.iter().any(|v| v == "All"));
        Ok(Self {
            grace_period,
            propagation,
            uid: pre.get("uid").and_then(Value::as_str).map(str::to_string),
            resource_version: pre
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
            dry_run,
        })
    }
}

fn has_finalizer(obj: &Value, name: &str) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|v| v == name))
}

fn add_finalizer(obj: &mut Value, name: &str) {
    if has_finalizer(obj, name) {
        return;
    }
    let meta = metadata_mut(obj);
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(a) = list.as_array_mut() {
        a.push(name.into());
    }
}

/// Deletes one object; answers the object when it still exists (graceful or finalizers) or a Success Status.
async fn delete_one(
    api: &Api,
    target: &Target,
    key: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(u16, Value), ApiError> {
    let info = &target.info;
    for _ in 0..16 {
        let current = api
            .storage
            .get(key)
            .await?
            .ok_or_else(|| ApiError::not_found(&info.plural, &info.group, name))?;
        let obj = to_output(&current)?;
        crate::admission::admit(
            api,
            target,
            crate::admission::Operation::Delete,
            Some(&obj),
            None,
        )
        .await?;
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(want) = &opts.uid
            && *want != uid
        {
            return Err(ApiError::conflict(
                &info.plural,
                &info.group,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {uid}"
                ),
            ));
        }
        if let Some(want) = &opts.resource_version
            && *want != current.mod_revision.to_string()
        {
            return Err(ApiError::conflict(
                &info.plural,
                &info.group,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {}",
                    current.mod_revision
                ),
            ));
        }
        let mut next = obj.clone();
        match opts.propagation.as_deref() {
            Some("Foreground") => add_finalizer(&mut next, "foregroundDeletion"),
            Some("Orphan") => add_finalizer(&mut next, "orphan"),
            _ => {}
        }
        let mut wait = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let mut grace = 0;
        if info.kind == "Pod" {
            let scheduled = next["spec"]
                .get("nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let finished = matches!(
                next["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            grace = opts
                .grace_period
                .or_else(|| next["spec"]["terminationGracePeriodSeconds"].as_i64())
                .unwrap_or(30)
                .max(0);
            if scheduled && !finished && grace > 0 {
                wait = true;
            } else {
                grace = 0;
            }
        }
        if info.kind == "Namespace" {
            let spec_finalizers = next["spec"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty());
            if spec_finalizers {
                wait = true;
                next["status"]["phase"] = "Terminating".into();
            }
        }
        if wait {
            let already = next["metadata"].get("deletionTimestamp").is_some();
            let meta = metadata_mut(&mut next);
            if !already || info.kind == "Pod" {
                let at =
                    std::time::SystemTime::now() + std::time::Duration::from_secs(grace as u64);
                let shorter = meta
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .is_none_or(|g| grace < g);
                if !already || shorter {
                    meta.insert("deletionTimestamp".into(), crate::meta::rfc3339(at).into());
                    meta.insert("deletionGracePeriodSeconds".into(), grace.into());
                }
            }
            if next == obj {
                return Ok((200, obj));
            }
            if opts.dry_run {
                return Ok((200, next));
            }
            match api
                .storage
                .update(key, to_stored(&next), current.mod_revision)
                .await?
            {
                Guarded::Done(rev) => {
                    super::set_resource_version(&mut next, rev);
                    return Ok((200, next));
                }
                Guarded::Changed(_) => continue,
            }
        }
        if opts.dry_run {
            return Ok((200, obj));
        }
        match api.storage.delete(key, current.mod_revision).await? {
            Guarded::Done(_) => {
                api.after_delete(info, &obj).await;
                if info.kind == "Pod"
                    || info.kind == "Namespace"
                    || info.kind == "CustomResourceDefinition"
                {
                    return Ok((200, obj));
                }
                return Ok((
                    200,
                    success(
                        json!({"name": name, "group": info.group, "kind": info.plural, "uid": uid}),
                    ),
                ));
            }
            Guarded::Changed(_) => continue,
        }
    }
    Err(ApiError::modified(&info.plural, &info.group, name))
}

pub async fn delete(
    api: &Api,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let opts = DeleteOptions::parse(target, content_type, body)?;
    let (code, value) = delete_one(api, target, &target.key(), target.name(), &opts).await?;
    Ok(json_response(code, &value))
}

pub async fn delete_collection(
    api: &Api,
    target: &Target,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let opts = DeleteOptions::parse(target, content_type, body)?;
    let list_opts = ListOptions::parse(target, false)?;
    let listed = read_list(
        api,
        &target.info.list_prefix(target.namespace()),
        &list_opts,
    )
    .await?;
    let mut items = Vec::new();
    for obj in listed.items {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let key = target.info.key(ns.as_deref(), &name);
        match delete_one(api, target, &key, &name, &opts).await {
            Ok((_, v)) if v["kind"] != "Status" => {
                items.push(crate::convert::to_served_form(&target.info, v))
            }
            Ok(_) => items.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": target.info.list_kind(),
            "apiVersion": target.info.api_version(),
            "metadata": {"resourceVersion": listed.revision.to_string()},
            "items": items,
        }),
    ))
}
