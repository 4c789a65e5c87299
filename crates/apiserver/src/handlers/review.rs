//! The kinds that are answered and never stored: access reviews (`kubectl auth can-i`), rules reviews
//! (`can-i --list`), SelfSubjectReview (`kubectl auth whoami`), TokenReview, and the TokenRequest of
//! `serviceaccounts/<name>/token` (`kubectl create token`).

use serde_json::{Value, json};

use super::{Body, Target, json_response};
use crate::api::Api;
use crate::auth::UserInfo;
use crate::auth::serviceaccount::{BoundObject, Request as TokenSpec};
use crate::authz::{self, Attributes, Decision};
use crate::status::{ApiError, Cause};
use hyper::Response;

fn invalid(target: &Target, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(&target.info.kind, &target.info.group, name, causes)
}

/// The answer: the request echoed with its status, as upstream returns it (201).
fn answer(mut obj: Value, status: Value) -> Response<Body> {
    let meta = crate::meta::metadata_mut(&mut obj);
    meta.entry("creationTimestamp").or_insert(Value::Null);
    obj["status"] = status;
    json_response(201, &obj)
}

/// Serves `create` of a create-only kind.
pub async fn create(api: &Api, target: &Target, obj: Value) -> Result<Response<Body>, ApiError> {
    let mut obj = obj;
    obj["apiVersion"] = json!(target.info.api_version());
    obj["kind"] = json!(target.info.kind);
    match target.info.kind.as_str() {
        "SelfSubjectReview" => Ok(answer(obj, json!({"userInfo": target.user.to_json()}))),
        "TokenReview" => token_review(api, obj).await,
        "SelfSubjectRulesReview" => rules_review(api, target, obj),
        _ => access_review(api, target, obj),
    }
}

/// Self, Local and plain SubjectAccessReviews.
fn access_review(api: &Api, target: &Target, obj: Value) -> Result<Response<Body>, ApiError> {
    let spec = &obj["spec"];
    let kind = target.info.kind.as_str();
    let (res, non) = (&spec["resourceAttributes"], &spec["nonResourceAttributes"]);
    if res.is_object() == non.is_object() {
        return Err(invalid(
            target,
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                &Value::Null,
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    }
    let user = if kind == "SelfSubjectAccessReview" {
        target.user.clone()
    } else {
        let user = UserInfo {
            name: spec["user"].as_str().unwrap_or("").to_string(),
            uid: spec["uid"].as_str().unwrap_or("").to_string(),
            groups: crate::meta::strings(&spec["groups"]),
            extra: spec["extra"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), crate::meta::strings(v)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if user.name.is_empty() && user.groups.is_empty() {
            return Err(invalid(
                target,
                "",
                vec![Cause::invalid(
                    "spec.user",
                    &json!(""),
                    "at least one of user or group must be specified",
                )],
            ));
        }
        user
    };
    if kind == "LocalSubjectAccessReview" {
        let ns = target.namespace().unwrap_or("");
        if !res.is_object() || res["namespace"].as_str().unwrap_or("") != ns {
            return Err(invalid(
                target,
                "",
                vec![Cause::invalid(
                    "spec.resourceAttributes.namespace",
                    &res["namespace"],
                    "must match metadata.namespace",
                )],
            ));
        }
    }
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    let attrs = if res.is_object() {
        Attributes {
            user,
            verb: s(res, "verb"),
            resource_request: true,
            group: s(res, "group"),
            version: s(res, "version"),
            resource: s(res, "resource"),
            subresource: s(res, "subresource"),
            namespace: s(res, "namespace"),
            name: s(res, "name"),
            path: String::new(),
        }
    } else {
        Attributes {
            user,
            verb: s(non, "verb"),
            resource_request: false,
            path: s(non, "path"),
            ..Attributes::default()
        }
    };
    let status = match authz::authorize(api, &attrs) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    };
    Ok(answer(obj, status))
}

/// SelfSubjectRulesReview: what the caller may do in `spec.namespace`.
fn rules_review(api: &Api, target: &Target, obj: Value) -> Result<Response<Body>, ApiError> {
    let ns = obj["spec"]["namespace"].as_str().unwrap_or("");
    if ns.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let user = &target.user;
    let (rules, errors) = api.rbac.rules_for(user, ns);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        } else {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                rule["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(rule);
        }
    }
    let mut errors = errors;
    let mut incomplete = !errors.is_empty();
    if crate::authz::node::node_identity(user).is_some() {
        // As upstream: the node authorizer cannot enumerate what it allows.
        incomplete = true;
        errors.insert(
            0,
            "node authorizer does not support user rule resolution".into(),
        );
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(match errors.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        });
    }
    Ok(answer(obj, status))
}

async fn token_review(api: &Api, obj: Value) -> Result<Response<Body>, ApiError> {
    let token = obj["spec"]["token"].as_str().unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let audiences = crate::meta::strings(&obj["spec"]["audiences"]);
    let status = match api.authn.token(api, token, &audiences).await {
        Ok(found) => {
            let mut user = found.user;
            if !user.in_group(crate::auth::AUTHENTICATED) {
                user.groups.push(crate::auth::AUTHENTICATED.into());
            }
            json!({"authenticated": true, "user": user.to_json(), "audiences": found.audiences})
        }
        Err(why) => json!({"user": {}, "error": why.0}),
    };
    Ok(answer(obj, status))
}

/// `serviceaccounts/<name>/token`: signs a bound token for the ServiceAccount.
pub async fn token_request(
    api: &Api,
    target: &Target,
    obj: Value,
) -> Result<Response<Body>, ApiError> {
    let ns = target.namespace().unwrap_or("default").to_string();
    let name = target.name().to_string();
    let sa = get(api, "serviceaccounts", &ns, &name).await?;
    if !(obj["spec"].is_object() || obj["spec"].is_null())
        || !(obj["spec"]["boundObjectRef"].is_object() || obj["spec"]["boundObjectRef"].is_null())
    {
        return Err(ApiError::bad_request(
            "error decoding TokenRequest: spec must be an object",
        ));
    }
    let spec = &obj["spec"];
    if !(spec["expirationSeconds"].is_null() || spec["expirationSeconds"].is_i64()) {
        return Err(ApiError::bad_request(
            "error decoding TokenRequest: spec.expirationSeconds must be an integer",
        ));
    }
    let expiration = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    let tr_invalid = |field: &str, value: &Value, detail: &str| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            &name,
            vec![Cause::invalid(field, value, detail)],
        )
    };
    if expiration < 600 {
        return Err(tr_invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > 1 << 32 {
        return Err(tr_invalid(
            "spec.expirationSeconds",
            &json!(expiration),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences = crate::meta::strings(&spec["audiences"]);
    if audiences.is_empty() {
        audiences = api.authn.service_accounts.audiences.clone();
    }
    let mut bound = None;
    let mut node = None;
    let r = &spec["boundObjectRef"];
    if r.is_object() {
        let kind = r["kind"].as_str().unwrap_or("");
        let bname = r["name"].as_str().unwrap_or("");
        let (plural, obj_ns) = match kind {
            "Pod" => ("pods", Some(ns.as_str())),
            "Secret" => ("secrets", Some(ns.as_str())),
            "Node" => ("nodes", None),
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {name:?} to object of kind {other:?}"
                )));
            }
        };
        let found = get_opt(api, plural, obj_ns, bname)
            .await?
            .ok_or_else(|| ApiError::not_found(plural, "", bname))?;
        let uid = found["metadata"]["uid"].as_str().unwrap_or("").to_string();
        if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::conflict(
                plural,
                "",
                bname,
                &format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        if kind == "Pod"
            && found["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                != name
        {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
            )));
        }
        if kind == "Pod" || crate::authz::node::node_identity(&target.user).is_some() {
            crate::admission::node_restriction::check_token_binding(
                target,
                Some(kind),
                (kind == "Pod").then_some(&found),
            )?;
        }
        let pod_node = found["spec"]["nodeName"]
            .as_str()
            .filter(|n| kind == "Pod" && !n.is_empty());
        if let Some(n) = pod_node
            && let Some(node_obj) = get_opt(api, "nodes", None, n).await?
        {
            let nuid = node_obj["metadata"]["uid"].as_str().unwrap_or("");
            node = Some((n.to_string(), nuid.to_string()));
        }
        if kind == "Node" {
            node = Some((bname.to_string(), uid));
        } else {
            bound = Some(BoundObject {
                kind: kind.to_string(),
                name: bname.to_string(),
                uid,
            });
        }
    }
    if !r.is_object() {
        crate::admission::node_restriction::check_token_binding(target, None, None)?;
    }
    let req = TokenSpec {
        namespace: ns.clone(),
        name: name.clone(),
        uid: sa["metadata"]["uid"].as_str().unwrap_or("").to_string(),
        audiences: audiences.clone(),
        expiration_seconds: expiration,
        bound,
        node,
    };
    let (token, exp) = api
        .authn
        .service_accounts
        .issue(&req)
        .map_err(ApiError::internal)?;
    let mut out = obj.clone();
    if !out["spec"].is_object() {
        out["spec"] = json!({});
    }
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["kind"] = json!("TokenRequest");
    let meta = crate::meta::metadata_mut(&mut out);
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(ns));
    meta.insert(
        "creationTimestamp".into(),
        json!(crate::meta::now_rfc3339()),
    );
    out["spec"]["audiences"] = json!(audiences);
    out["spec"]["expirationSeconds"] = json!(expiration);
    if !out["spec"]["boundObjectRef"].is_object() {
        out["spec"]["boundObjectRef"] = Value::Null;
    }
    let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp.max(0) as u64);
    out["status"] = json!({"token": token, "expirationTimestamp": crate::meta::rfc3339(expires)});
    Ok(json_response(201, &out))
}

async fn get_opt(
    api: &Api,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    let info = api
        .registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    match api.storage.get(&info.key(ns, name)).await? {
        Some(stored) => super::to_output(&stored).map(Some),
        None => Ok(None),
    }
}

async fn get(api: &Api, plural: &str, ns: &str, name: &str) -> Result<Value, ApiError> {
    get_opt(api, plural, Some(ns), name)
        .await?
        .ok_or_else(|| ApiError::not_found(plural, "", name))
}
