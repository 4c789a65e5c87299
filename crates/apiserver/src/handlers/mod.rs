//! The generic REST handlers: routing of a request to discovery, health or a resource verb, and the shared
//! pieces (responses, body decoding, stored-object conversion) every verb uses.

mod delete;
mod encrypt;
mod list;
mod pods;
mod proxy;
mod read;
mod review;
mod subresource;
mod watch;
mod write;

pub use subresource::selector_string;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::Value;

use crate::api::Api;
use crate::auth::UserInfo;
use crate::request::{self, Query, RequestInfo};
use crate::resources::ResourceInfo;
use crate::status::ApiError;
use crate::storage::{StorageError, Stored};

/// Response bodies: whole JSON documents or streamed watch events.
pub type Body = BoxBody<Bytes, Infallible>;

/// Upstream's request body limit (3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// How much of an oversized body is still read (and dropped) before answering 413.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// The response for a read: the object or list, or a Table of it when the client asked for one.
pub fn read_response(target: &Target, value: Value) -> Response<Body> {
    let Some(include) = target.table else {
        return json_response(200, &value);
    };
    let info = &target.info;
    let table = match value.get("items").and_then(Value::as_array) {
        Some(items) if value["kind"] != info.kind.as_str() => {
            crate::printers::table_for(info, items, value["metadata"].clone(), include)
        }
        _ => {
            let rv = value["metadata"]["resourceVersion"].clone();
            let meta = serde_json::json!({"resourceVersion": rv});
            crate::printers::table_for(info, std::slice::from_ref(&value), meta, include)
        }
    };
    json_response(200, &table)
}

/// A JSON response.
pub fn json_response(status: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A Status response for an error.
pub fn error_response(err: &ApiError) -> Response<Body> {
    json_response(err.code, &err.to_status())
}

/// A plain-text response.
pub fn text_response(status: u16, text: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(full(text.into()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::Compacted(_) => ApiError::expired(
                "The resourceVersion for the provided list is too old.".to_string(),
            ),
            StorageError::TooLarge => ApiError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: "etcdserver: request is too large".into(),
                details: None,
            },
            StorageError::Etcd(e) => ApiError::internal(e),
        }
    }
}

/// Answers an error for a request whose body was not read, reading (and dropping) the body first: closing a
/// connection while the client is still sending makes it report a broken pipe instead of the answer.
pub async fn refuse(req: Request<Incoming>, err: &ApiError) -> Response<Body> {
    let _ = read_body(req.into_body()).await;
    error_response(err)
}

/// Reads the whole request body (at most [`MAX_BODY_BYTES`]).
pub async fn read_body(mut body: Incoming) -> Result<Bytes, ApiError> {
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| ApiError::bad_request(format!("error reading request body: {err}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_BYTES {
            // Past what is worth reading to answer politely: the connection is dropped with the answer.
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        // The rest of an oversized body was read and dropped, so the client gets the 413 rather than a
        // connection closed under its upload.
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    Ok(buf.freeze())
}

/// The media type of a request, without parameters.
pub fn content_type(req_headers: &hyper::HeaderMap) -> String {
    req_headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|| "application/json".into())
}

/// Decodes an object body: JSON, YAML, or Kubernetes protobuf for built-in kinds.
pub fn decode_object(content_type: &str, body: &[u8]) -> Result<Value, ApiError> {
    match content_type {
        "application/json" | "" | "*/*" => {}
        "application/yaml" => {
            let value: Value = serde_yaml_ng::from_slice(body)
                .map_err(|err| ApiError::bad_request(format!("error decoding YAML body: {err}")))?;
            if !value.is_object() {
                return Err(ApiError::bad_request(format!(
                    "error decoding YAML body: expected an object, got {}",
                    kind_of(&value)
                )));
            }
            return Ok(value);
        }
        crate::protobuf::MEDIA_TYPE => return crate::protobuf::decode(body),
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!(
            "error decoding request body: couldn't get version/kind; json parse error: {err}"
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "error decoding request body: json: cannot unmarshal {} into Go value of type struct",
            kind_of(&value)
        )));
    }
    Ok(value)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Null => "null",
        Value::Object(_) => "object",
    }
}

/// A stored object as clients see it: `metadata.resourceVersion` is the key's mod revision.
pub fn to_output(stored: &Stored) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_slice(&stored.value).map_err(|err| {
        ApiError::internal(format!("decoding stored object {}: {err}", stored.key))
    })?;
    set_resource_version(&mut value, stored.mod_revision);
    Ok(value)
}

pub fn set_resource_version(value: &mut Value, rev: i64) {
    crate::meta::metadata_mut(value).insert("resourceVersion".into(), rev.to_string().into());
}

/// The bytes stored for an object: JSON without `metadata.resourceVersion`.
pub fn to_stored(value: &Value) -> Vec<u8> {
    let mut v = value.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A resource request after routing: the resource, the parsed path and query.
pub struct Target {
    pub info: Arc<ResourceInfo>,
    pub req: RequestInfo,
    pub query: Query,
    /// The client asked for a `meta.k8s.io/v1` Table (reads only), with this much of each object.
    pub table: Option<crate::printers::Include>,
    /// The client's `User-Agent` (the default field manager is its first segment).
    pub user_agent: String,
    /// Who asks.
    pub user: UserInfo,
}

impl Target {
    pub fn namespace(&self) -> Option<&str> {
        if self.info.namespaced {
            self.req.namespace.as_deref()
        } else {
            None
        }
    }

    pub fn name(&self) -> &str {
        self.req.name.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> String {
        self.info.key(self.namespace(), self.name())
    }

    pub fn not_found(&self) -> ApiError {
        ApiError::not_found(&self.info.plural, &self.info.group, self.name())
    }

    /// 409: the object changed since the client (or this request) read it.
    pub fn modified(&self) -> ApiError {
        ApiError::modified(&self.info.plural, &self.info.group, self.name())
    }

    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }
}

/// What a request turned out to be, for the audit log.
#[derive(Default)]
struct Seen {
    attrs: Option<crate::authz::Attributes>,
    decision: Option<&'static str>,
    /// The authenticated caller when it acts as someone else (impersonation).
    caller: Option<UserInfo>,
}

/// Serves one request from `peer`; `peer_cert` is what the connection's verified client certificate names.
pub async fn handle(
    api: Arc<Api>,
    req: Request<Incoming>,
    peer_cert: Option<crate::auth::x509::PeerCert>,
    peer: std::net::IpAddr,
) -> Response<Body> {
    let Some(auditor) = api.audit.as_ref() else {
        return guarded(serve(api.clone(), req, peer_cert, &mut Seen::default())).await;
    };
    let received = std::time::SystemTime::now();
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.to_string());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut seen = Seen::default();
    let resp = guarded(serve(api.clone(), req, peer_cert, &mut seen)).await;
    let attrs = seen.attrs.unwrap_or_default();
    auditor.log(&crate::audit::Record {
        attrs: &attrs,
        uri: &uri,
        source: peer,
        user_agent: &user_agent,
        code: resp.status().as_u16(),
        received,
        decision: seen.decision,
        caller: seen.caller.as_ref(),
        streaming: attrs.verb == "watch" || resp.status() == StatusCode::SWITCHING_PROTOCOLS,
    });
    resp
}

/// Runs a request's handling so that a bug that panics answers 500 instead of dropping the connection
/// (and the audit record).
async fn guarded(fut: impl std::future::Future<Output = Response<Body>>) -> Response<Body> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::error!("request handling panicked");
            error_response(&ApiError::internal(
                "the server failed to handle the request",
            ))
        }
    }
}

async fn serve(
    api: Arc<Api>,
    req: Request<Incoming>,
    peer_cert: Option<crate::auth::x509::PeerCert>,
    seen: &mut Seen,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    if crate::supervisor::is_supervisor_path(&path) {
        // The join path authenticates with the join token, not the Kubernetes chain.
        seen.attrs = Some(crate::authz::Attributes::non_resource(
            &UserInfo::default(),
            req.method(),
            &path,
        ));
        return crate::supervisor::serve(&api, req).await;
    }
    let query = Query::parse(req.uri().query());
    let user = match api
        .authn
        .authenticate(&api, req.headers(), peer_cert.as_ref(), &path)
        .await
    {
        Ok(user) => user,
        Err(why) => {
            tracing::debug!(%path, why = %why.0, "unauthenticated request");
            seen.attrs = Some(crate::authz::Attributes::non_resource(
                &UserInfo::default(),
                req.method(),
                &path,
            ));
            return refuse(req, &ApiError::unauthorized()).await;
        }
    };
    let caller = user.clone();
    let user = match crate::authz::impersonation::impersonate(&api, req.headers(), user) {
        Ok(user) => user,
        Err(err) => {
            seen.attrs = Some(crate::authz::Attributes::non_resource(
                &caller,
                req.method(),
                &path,
            ));
            seen.decision = Some("forbid");
            return refuse(req, &err).await;
        }
    };
    if user != caller {
        seen.caller = Some(caller);
    }
    let parsed = request::parse(req.method(), &path, &query);
    let attrs = match &parsed {
        Some(info) => {
            let mut attrs = crate::authz::Attributes::resource(&user, info);
            if attrs.name.is_empty() && matches!(info.verb, "list" | "watch") {
                // A list or watch of one object by field selector is authorized for that name (upstream's
                // RequestInfo does the same).
                if let Some(name) = single_name_selector(query.get("fieldSelector")) {
                    attrs.name = name;
                }
            }
            attrs
        }
        None => crate::authz::Attributes::non_resource(&user, req.method(), &path),
    };
    let checked = crate::authz::check(&api, &attrs);
    seen.decision = Some(if checked.is_ok() { "allow" } else { "forbid" });
    seen.attrs = Some(attrs);
    if let Err(err) = checked {
        return refuse(req, &err).await;
    }
    if path.starts_with(encrypt::PREFIX) {
        let method = req.method().clone();
        let _ = read_body(req.into_body()).await;
        return encrypt::serve(&api, &method, &path)
            .await
            .unwrap_or_else(|e| error_response(&e));
    }
    if let Some(resp) = crate::discovery::serve(&api, &req, &path, &query) {
        return resp;
    }
    let Some(info) = parsed else {
        return refuse(req, &ApiError::route_not_found()).await;
    };
    let Some(res) = api.registry.get(&info.group, &info.version, &info.resource) else {
        return refuse(req, &ApiError::route_not_found()).await;
    };
    if info.namespace.is_some() && !res.namespaced {
        return refuse(req, &ApiError::route_not_found()).await;
    }
    let verb = info.verb;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok());
    let table = (crate::printers::wants_table(accept) && matches!(verb, "get" | "list" | "watch"))
        .then(|| crate::printers::Include::parse(query.get("includeObject")));
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_string();
    let target = Target {
        info: res,
        req: info,
        query,
        table,
        user_agent,
        user,
    };
    let start = std::time::Instant::now();
    let resource_label = target.info.plural.clone();
    let result = dispatch(&api, target, req).await;
    let resp = result.unwrap_or_else(|err| error_response(&err));
    api.metrics.observe(
        verb,
        &resource_label,
        resp.status().as_u16(),
        start.elapsed(),
    );
    resp
}

async fn dispatch(
    api: &Api,
    target: Target,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let sub = target.req.subresource.clone();
    if let Some(sub) = sub {
        return subresource::serve(api, target, req, &sub).await;
    }
    let method = req.method().clone();
    if target.info.create_only {
        if target.req.verb != "create" || target.req.name.is_some() {
            let err = ApiError::method_not_allowed(
                method.as_str(),
                &target.info.plural,
                &target.info.group,
            );
            return Ok(refuse(req, &err).await);
        }
        let ct = content_type(req.headers());
        let body = read_body(req.into_body()).await?;
        let obj = decode_object(&ct, &body)?;
        return review::create(api, &target, obj).await;
    }
    match target.req.verb {
        "get" => read::get(api, &target).await,
        "list" => list::list(api, &target).await,
        "watch" => watch::watch(api, &target).await,
        "create" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            write::create(api, &target, &ct, &body).await
        }
        "update" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            write::update(api, &target, &ct, &body, None).await
        }
        "patch" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            write::patch(api, &target, &ct, &body, None).await
        }
        "delete" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            delete::delete(api, &target, &ct, &body).await
        }
        "deletecollection" => {
            let ct = content_type(req.headers());
            let body = read_body(req.into_body()).await?;
            delete::delete_collection(api, &target, &ct, &body).await
        }
        _ => {
            let err = ApiError::method_not_allowed(
                method.as_str(),
                &target.info.plural,
                &target.info.group,
            );
            Ok(refuse(req, &err).await)
        }
    }
}

/// `metadata.name=<x>` (or `==`) as the whole field selector.
fn single_name_selector(selector: Option<&str>) -> Option<String> {
    let s = selector?.trim();
    let v = s
        .strip_prefix("metadata.name==")
        .or_else(|| s.strip_prefix("metadata.name="))?;
    (!v.is_empty() && !v.contains(',')).then(|| v.to_string())
}

/// `Method` helper for discovery's read-only routes.
pub fn is_read(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_from_json_and_yaml() {
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: \"1\"\n";
        let v = decode_object("application/yaml", yaml).unwrap();
        assert_eq!(v["data"]["k"], "1");
        assert_eq!(v, decode_object("application/json", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"1"}}"#).unwrap());
        assert_eq!(
            decode_object("application/yaml", b"a: [").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_object("application/yaml", b"- 1").unwrap_err().code,
            400
        );
        assert_eq!(
            decode_object("application/json", b"{").unwrap_err().code,
            400
        );
        assert_eq!(decode_object("text/plain", b"{}").unwrap_err().code, 415);
    }
}
