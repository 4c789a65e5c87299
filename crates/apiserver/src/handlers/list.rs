//! LIST: label and field selectors, `limit`/`continue` pages read at one revision, `resourceVersion` semantics.

use base64::Engine;
use hyper::Response;
use serde_json::{Value, json};

use super::{Body, Target, read_response, to_output};
use crate::api::Api;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{StorageError, Stored, prefix_end};

/// The selectors and paging options of a list or watch.
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: i64,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    /// Collect items as stored JSON (`Listed::raw`) instead of parsed objects; only without selectors.
    pub raw: bool,
    /// Converts stored objects to this resource's served version before selectors see them
    /// (events.k8s.io/v1, custom resources of several versions).
    pub serve: Option<std::sync::Arc<crate::resources::ResourceInfo>>,
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
            raw: false,
            serve: crate::convert::converts(&target.info).then(|| target.info.clone()),
        })
    }

    /// The selectors alone (for matching converted objects).
    pub fn clone_selectors(&self) -> Self {
        Self {
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            limit: 0,
            continue_token: None,
            resource_version: None,
            resource_version_match: None,
            raw: false,
            serve: None,
        }
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// The stored JSON with `"resourceVersion":"<rev>"` put first in its top-level `metadata` object, without
/// parsing the document (a byte scan that skips strings and tracks depth). `None` if there is no
/// top-level `metadata` object.
pub fn splice_resource_version(json: &[u8], rev: i64) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"\"metadata\"";
    let (mut depth, mut i) = (0usize, 0usize);
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                let end = i + 1;
                if depth == 1 && json.get(start..end) == Some(KEY) {
                    let mut j = end;
                    while json.get(j).is_some_and(u8::is_ascii_whitespace) {
                        j += 1;
                    }
                    if json.get(j) != Some(&b':') {
                        return None;
                    }
                    j += 1;
                    while json.get(j).is_some_and(u8::is_ascii_whitespace) {
                        j += 1;
                    }
                    if json.get(j) != Some(&b'{') {
                        return None;
                    }
                    let mut k = j + 1;
                    while json.get(k).is_some_and(u8::is_ascii_whitespace) {
                        k += 1;
                    }
                    let comma = if json.get(k) == Some(&b'}') { "" } else { "," };
                    let insert = format!("\"resourceVersion\":\"{rev}\"{comma}");
                    let mut out = Vec::with_capacity(json.len() + insert.len());
                    out.extend_from_slice(&json[..=j]);
                    out.extend_from_slice(insert.as_bytes());
                    out.extend_from_slice(&json[j + 1..]);
                    return Some(out);
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
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
    /// With `ListOptions::raw`: the stored JSON of each item, `resourceVersion` spliced in, unparsed.
    pub raw: Vec<Vec<u8>>,
    pub revision: i64,
    pub continue_token: Option<String>,
    pub remaining: Option<i64>,
}

/// Reads a list page under `prefix` (shared with the initial state of watches).
/// Adds one stored object to a list (stored JSON passed through under `opts.raw`, else parsed, converted and
/// matched against the selectors); whether it was included.
fn collect(
    stored: &Stored,
    opts: &ListOptions,
    items: &mut Vec<Value>,
    raw: &mut Vec<Vec<u8>>,
) -> Result<bool, ApiError> {
    if opts.raw {
        // No selectors to evaluate: pass the stored JSON through.
        match splice_resource_version(&stored.value, stored.mod_revision) {
            Some(bytes) => raw.push(bytes),
            None => raw.push(serde_json::to_vec(&to_output(stored)?).unwrap_or_default()),
        }
        return Ok(true);
    }
    let mut obj = to_output(stored)?;
    if let Some(info) = &opts.serve {
        obj = crate::convert::to_served_form(info, obj);
    }
    if opts.matches(&obj) {
        items.push(obj);
        return Ok(true);
    }
    Ok(false)
}

/// The revision a list may be served from the watch cache at (upstream's cached lists): resourceVersion
/// "0" (any), or "N" not-older-than without paging. `None`: read etcd.
fn cacheable(opts: &ListOptions) -> Option<i64> {
    if opts.continue_token.is_some() {
        return None;
    }
    match (
        opts.resource_version.as_deref(),
        opts.resource_version_match.as_deref(),
    ) {
        (Some("0"), None | Some("NotOlderThan")) => Some(0),
        (Some(rv), None | Some("NotOlderThan")) if opts.limit == 0 => rv.parse().ok(),
        _ => None,
    }
}

/// A list from the watch cache (all items: the cache does not page, as upstream's), or `None`.
async fn read_cached(
    api: &Api,
    info: &crate::resources::ResourceInfo,
    narrow: &str,
    opts: &ListOptions,
) -> Result<Option<Listed>, ApiError> {
    let Some(min) = cacheable(opts) else {
        return Ok(None);
    };
    let prefix = info.list_prefix(None);
    let Some((revision, stored)) = api
        .watch_cache
        .list(&api.storage, &prefix, narrow, min)
        .await
    else {
        return Ok(None);
    };
    let (mut items, mut raw) = (Vec::new(), Vec::new());
    for s in &stored {
        collect(s, opts, &mut items, &mut raw)?;
    }
    Ok(Some(Listed {
        items,
        raw,
        revision,
        continue_token: None,
        remaining: None,
    }))
}

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
    let mut raw = Vec::new();
    let mut items_len = 0usize;
    let mut first_count = None;
    loop {
        // Fetch at least a page's worth; with selectors keep going until the page is full.
        let want = if opts.limit > 0 {
            (opts.limit - items_len as i64).max(if filtering { opts.limit.max(100) } else { 1 })
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
            if collect(stored, opts, &mut items, &mut raw)? {
                items_len += 1;
                if opts.limit > 0 && items_len as i64 == opts.limit {
                    break;
                }
            }
        }
        let last_examined_is_end = last_key.as_deref() == page.items.last().map(|s| s.key.as_str());
        let more_in_range = page.more || !last_examined_is_end;
        if opts.limit > 0 && items_len as i64 >= opts.limit && more_in_range {
            let last = last_key.unwrap_or_default();
            let next = format!("{}\u{0}", last.strip_prefix(prefix).unwrap_or(&last));
            let remaining = if filtering {
                None
            } else {
                // Keys after this page at the same revision.
                let examined = items_len as i64;
                first_count.map(|c| (c - examined).max(0))
            };
            return Ok(Listed {
                items,
                raw,
                revision,
                continue_token: Some(encode_continue(revision, &next)),
                remaining,
            });
        }
        if !page.more {
            return Ok(Listed {
                items,
                raw,
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
    let mut opts = ListOptions::parse(target, false)?;
    // Plain JSON lists without selectors pass the stored JSON through: no parse and re-serialize per item.
    opts.raw = target.table.is_none()
        && opts.serve.is_none()
        && opts.labels.is_empty()
        && opts.fields.is_empty()
        && target.info.custom.is_none();
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
                let obj = crate::convert::to_served_form(info, to_output(stored)?);
                if opts.matches(&obj) {
                    items.push(obj);
                }
            }
            Listed {
                items,
                raw: Vec::new(),
                revision,
                continue_token: None,
                remaining: None,
            }
        }
        _ => {
            let narrow = info.list_prefix(target.namespace());
            match read_cached(api, info, &narrow, &opts).await? {
                Some(listed) => listed,
                None => read_list(api, &narrow, &opts).await?,
            }
        }
    };
    if opts.raw {
        return Ok(raw_list_response(info, listed));
    }
    Ok(read_response(target, list_body(info, listed)))
}

/// A list response assembled from stored JSON items.
fn raw_list_response(info: &crate::resources::ResourceInfo, mut listed: Listed) -> Response<Body> {
    let items = std::mem::take(&mut listed.raw);
    let mut shell = list_body(info, listed);
    if let Some(map) = shell.as_object_mut() {
        map.remove("items");
    }
    // {"apiVersion":…,"kind":…,"metadata":{…},"items":[…]}
    let head = serde_json::to_vec(&shell).unwrap_or_default();
    let mut body =
        Vec::with_capacity(head.len() + 16 + items.iter().map(|i| i.len() + 1).sum::<usize>());
    body.extend_from_slice(&head[..head.len().saturating_sub(1)]);
    body.extend_from_slice(br#","items":["#);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    let mut resp = Response::new(super::full(body));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
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
    fn resource_version_is_spliced_into_top_level_metadata() {
        let stored = br#"{"apiVersion":"v1","data":{"metadata":"{\"x\"}"},"kind":"ConfigMap","metadata":{"name":"c"}}"#;
        let out = splice_resource_version(stored, 42).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"], json!({"name": "c", "resourceVersion": "42"}));
        assert_eq!(v["data"]["metadata"], "{\"x\"}");
        let empty = splice_resource_version(br#"{"a":{"metadata":{}},"metadata":{}}"#, 7).unwrap();
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "7"}));
        assert!(v["a"]["metadata"].as_object().unwrap().is_empty());
        assert!(splice_resource_version(br#"{"a":1}"#, 1).is_none());
    }

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
