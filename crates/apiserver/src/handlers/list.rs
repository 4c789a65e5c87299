//! LIST: label and field selectors, `limit`/`continue` pages read at one revision, `resourceVersion` semantics.

use base64::Engine;
use hyper::Response;
use serde_json::{Value, json};

use super::{Body, Target, read_response, to_output};
use crate::api::Api;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{StorageError, prefix_end};

/// The selectors and paging options of a list or watch.
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

fn invalid_param(field: &str, value: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "ListOptions",
        "meta.k8s.io",
        "",
        vec![crate::status::Cause::invalid(
            field,
            &Value::from(value),
            why,
        )],
    )
}

impl ListOptions {
    pub fn parse(target: &Target, watch: bool) -> Result<Self, ApiError> {
        let q = &target.query;
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &target.info.kind)?;
        let limit = match q.get("limit") {
            None | Some("") => 0,
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                .max(0),
        };
        let continue_token = q
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let resource_version = q
            .get("resourceVersion")
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let resource_version_match = q
            .get("resourceVersionMatch")
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        if let Some(m) = &resource_version_match {
            if resource_version.is_none() {
                return Err(invalid_param(
                    "resourceVersionMatch",
                    m,
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
            if continue_token.is_some() {
                return Err(invalid_param(
                    "resourceVersionMatch",
                    m,
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
            if m == "Exact" && resource_version.as_deref() == Some("0") {
                return Err(invalid_param(
                    "resourceVersionMatch",
                    m,
                    "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            if m != "Exact" && m != "NotOlderThan" {
                return Err(ApiError::invalid(
                    "ListOptions",
                    "meta.k8s.io",
                    "",
                    vec![crate::status::Cause::not_supported(
                        "resourceVersionMatch",
                        &Value::from(m.as_str()),
                        &["Exact", "NotOlderThan", ""],
                    )],
                ));
            }
        }
        if !watch && q.flag("sendInitialEvents") {
            return Err(invalid_param(
                "sendInitialEvents",
                "true",
                "sendInitialEvents is forbidden for list",
            ));
        }
        if let Some(rv) = &resource_version
            && rv.parse::<i64>().is_err()
        {
            return Err(ApiError::bad_request(format!(
                "invalid resource version: {rv}"
            )));
        }
        Ok(Self {
            labels,
            fields,
            limit,
            continue_token,
            resource_version,
            resource_version_match,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Upstream's continue token: base64 of `{"v":"meta.k8s.io/v1","rv":…,"start":"<key after prefix>"}`.
fn encode_continue(rev: i64, start: &str) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rev, "start": start});
    base64::engine::general_purpose::URL_SAFE.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(token)
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(token))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad());
    }
    let rev = v["rv"].as_i64().filter(|r| *r > 0).ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?.to_string();
    if start.contains("..") || start.starts_with('/') {
        return Err(bad());
    }
    Ok((rev, start))
}

/// A list result: the items (as served) and the list metadata.
pub struct Listed {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Reads a list page under `prefix` (shared with the initial state of watches).
pub async fn read_list(api: &Api, prefix: &str, opts: &ListOptions) -> Result<Listed, ApiError> {
    let (mut revision, mut start) = match &opts.continue_token {
        Some(token) => {
            let (rev, start) = decode_continue(token)?;
            (rev, format!("{prefix}{start}"))
        }
        None => (0, prefix.to_string()),
    };
    if revision == 0 && opts.resource_version_match.as_deref() == Some("Exact") {
        revision = opts
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
    }
    let end = prefix_end(prefix);
    let filtering = !opts.labels.is_empty() || !opts.fields.is_empty();
    let mut items = Vec::new();
    let mut first_count = None;
    loop {
        // Fetch at least a page's worth; with selectors keep going until the page is full.
        let want = if opts.limit > 0 {
            (opts.limit - items.len() as i64).max(if filtering { opts.limit.max(100) } else { 1 })
        } else {
            0
        };
        let page = api
            .storage
            .range(start.as_bytes(), &end, want, revision)
            .await
            .map_err(|err| match err {
                StorageError::Compacted(_) if opts.continue_token.is_some() => ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ),
                StorageError::Compacted(_) => ApiError::expired(format!(
                    "too old resource version: {} ({})",
                    revision, revision
                )),
                other => other.into(),
            })?;
        if revision == 0 {
            revision = page.revision;
        }
        first_count.get_or_insert(page.count);
        let mut last_key = None;
        for stored in &page.items {
            last_key = Some(stored.key.clone());
            let obj = to_output(stored)?;
            if opts.matches(&obj) {
                items.push(obj);
                if opts.limit > 0 && items.len() as i64 == opts.limit {
                    break;
                }
            }
        }
        let last_examined_is_end = last_key.as_deref() == page.items.last().map(|s| s.key.as_str());
        let more_in_range = page.more || !last_examined_is_end;
        if opts.limit > 0 && items.len() as i64 >= opts.limit && more_in_range {
            let last = last_key.unwrap_or_default();
            let next = format!("{}\u{0}", last.strip_prefix(prefix).unwrap_or(&last));
            let remaining = if filtering {
                None
            } else {
                // Keys after this page at the same revision.
                let examined = items.len() as i64;
                first_count.map(|c| (c - examined).max(0))
            };
            return Ok(Listed {
                items,
                revision,
                continue_token: Some(encode_continue(revision, &next)),
                remaining,
            });
        }
        if !page.more {
            return Ok(Listed {
                items,
                revision,
                continue_token: None,
                remaining: None,
            });
        }
        let last = page.items.last().map(|s| s.key.clone()).unwrap_or_default();
        start = format!("{last}\u{0}");
    }
}

pub async fn list(api: &Api, target: &Target) -> Result<Response<Body>, ApiError> {
    let opts = ListOptions::parse(target, false)?;
    let info = &target.info;
    let scoped = target.namespace().is_some() || !info.namespaced;
    let listed = match opts.fields.exact_name() {
        // One key: read it directly (kubectl wait and rollout status list by name).
        Some(name)
            if scoped && opts.continue_token.is_none() && opts.resource_version_match.is_none() =>
        {
            let key = info.key(target.namespace(), name);
            let end = format!("{key}\u{0}");
            let page = api
                .storage
                .range(key.as_bytes(), end.as_bytes(), 0, 0)
                .await?;
            let revision = page.revision;
            let mut items = Vec::new();
            if let Some(stored) = page.items.first() {
                let obj = to_output(stored)?;
                if opts.matches(&obj) {
                    items.push(obj);
                }
            }
            Listed {
                items,
                revision,
                continue_token: None,
                remaining: None,
            }
        }
        _ => read_list(api, &info.list_prefix(target.namespace()), &opts).await?,
    };
    Ok(read_response(target, list_body(info, listed)))
}

fn list_body(info: &crate::resources::ResourceInfo, listed: Listed) -> Value {
    let mut metadata = json!({"resourceVersion": listed.revision.to_string()});
    if let Some(c) = listed.continue_token {
        metadata["continue"] = c.into();
    }
    if let Some(r) = listed.remaining {
        metadata["remainingItemCount"] = r.into();
    }
    json!({
        "kind": info.list_kind(),
        "apiVersion": info.api_version(),
        "metadata": metadata,
        "items": listed.items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "ns/name\u{0}");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "ns/name\u{0}".to_string())
        );
        assert!(decode_continue("garbage").is_err());
    }
}
