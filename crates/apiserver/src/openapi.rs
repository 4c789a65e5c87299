//! OpenAPI: `/openapi/v3` (an index of group-versions, each document addressed by its content hash) and the
//! per-group-version documents kubectl reads for validation, `explain` and patch decisions, built from the
//! resource table and the type table. `/openapi/v2` serves the same schemas as one Swagger 2.0 JSON document.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, Response, header};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::api::Api;
use crate::handlers::{Body, error_response, json_response};
use crate::request::Query;
use crate::resources::{GroupVersion, ResourceInfo, Subresource};
use crate::schema::{Catalog, Field, Kind, catalog, definition};
use crate::status::ApiError;

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";

/// The patch media types the server accepts (listed on PATCH operations; kubectl reads them).
pub const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
];

/// Which OpenAPI flavour a document is written in (only `$ref` prefixes differ).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V3,
}

impl Flavor {
    fn reference(self, def: &str) -> Value {
        match self {
            Flavor::V2 => json!({"$ref": format!("#/definitions/{def}")}),
            Flavor::V3 => json!({"$ref": format!("#/components/schemas/{def}")}),
        }
    }
}

/// Schemas of the hand-mapped wrapper types, as upstream publishes them.
fn wrapper_schema(def: &str) -> Option<Value> {
    let ext = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.";
    Some(match def.strip_prefix(META) {
        Some("Time") | Some("MicroTime") => json!({"type": "string", "format": "date-time"}),
        Some("Duration") => json!({"type": "string"}),
        Some("FieldsV1") => json!({"type": "object"}),
        _ => match def {
            "io.k8s.apimachinery.pkg.api.resource.Quantity" => json!({"type": "string"}),
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
                json!({"type": "string", "format": "int-or-string"})
            }
            "io.k8s.apimachinery.pkg.runtime.RawExtension" => json!({"type": "object"}),
            d if d
                .strip_prefix(ext)
                .is_some_and(|n| n == "JSON" || n.starts_with("JSONSchemaPropsOr")) =>
            {
                json!({"x-kubernetes-preserve-unknown-fields": true})
            }
            _ => return None,
        },
    })
}

fn scalar_schema(kind: &Kind) -> Value {
    match kind {
        Kind::String => json!({"type": "string"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Int32 => json!({"type": "integer", "format": "int32"}),
        Kind::Int64 => json!({"type": "integer", "format": "int64"}),
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Message | Kind::Map(_) => json!({"type": "object"}),
    }
}

struct Builder<'c> {
    catalog: &'c Catalog,
    flavor: Flavor,
    /// Definition → schema, filled as types are reached.
    schemas: BTreeMap<String, Value>,
    /// Served kinds by definition: their group-version-kinds.
    gvks: BTreeMap<String, Vec<Value>>,
}

impl Builder<'_> {
    fn field_schema(&mut self, f: &Field) -> Value {
        let item = match &f.kind {
            Kind::Message => {
                let def = f.reference.clone().unwrap_or_default();
                self.add(&def);
                self.flavor.reference(&def)
            }
            Kind::Map(value) => {
                let inner = match value.as_ref() {
                    Kind::Message => {
                        let def = f.reference.clone().unwrap_or_default();
                        self.add(&def);
                        self.flavor.reference(&def)
                    }
                    k => scalar_schema(k),
                };
                json!({"type": "object", "additionalProperties": inner})
            }
            k => scalar_schema(k),
        };
        let mut schema = if f.repeated {
            json!({"type": "array", "items": item})
        } else {
            item
        };
        if let Some(obj) = schema.as_object_mut() {
            if let Some(k) = &f.patch_merge_key {
                obj.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
            if let Some(s) = &f.patch_strategy {
                obj.insert("x-kubernetes-patch-strategy".into(), json!(s));
            }
            if let Some(t) = &f.list_type {
                obj.insert("x-kubernetes-list-type".into(), json!(t));
            }
            if !f.list_map_keys.is_empty() {
                obj.insert("x-kubernetes-list-map-keys".into(), json!(f.list_map_keys));
            }
        }
        schema
    }

    /// Adds `def` (and every type it reaches) to the schemas.
    fn add(&mut self, def: &str) {
        if def.is_empty() || self.schemas.contains_key(def) {
            return;
        }
        if let Some(w) = wrapper_schema(def) {
            self.schemas.insert(def.to_string(), w);
            return;
        }
        self.schemas.insert(def.to_string(), Value::Null);
        let mut properties = Map::new();
        let mut required = Vec::new();
        self.properties(def, &mut properties, &mut required);
        let mut schema = json!({"type": "object", "properties": properties});
        if let Some(d) = crate::schema::docs()
            .get(def)
            .and_then(|d| d.description.as_ref())
        {
            schema["description"] = json!(d);
        }
        if properties_have_metadata(&schema) || def.starts_with(META) {
            schema["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
            schema["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
        }
        if !required.is_empty() {
            schema["required"] = json!(required);
        }
        if let Some(gvks) = self.gvks.get(def) {
            schema["x-kubernetes-group-version-kind"] = json!(gvks);
        }
        self.schemas.insert(def.to_string(), schema);
    }

    fn properties(
        &mut self,
        def: &str,
        props: &mut Map<String, Value>,
        required: &mut Vec<String>,
    ) {
        let Some(ty) = self.catalog.get(def) else {
            return;
        };
        for f in &ty.fields {
            match &f.json {
                Some(name) => {
                    let mut schema = self.field_schema(f);
                    let doc = crate::schema::docs()
                        .get(def)
                        .and_then(|d| d.fields.get(name));
                    if let Some(doc) = doc {
                        // A $ref's siblings are ignored in OpenAPI 3.0: wrap it, as upstream does (its
                        // Swagger 2.0 document keeps the description beside the $ref).
                        if schema.get("$ref").is_some() && self.flavor == Flavor::V3 {
                            schema = json!({"allOf": [schema], "description": doc});
                        } else {
                            schema["description"] = json!(doc);
                        }
                    }
                    props.insert(name.clone(), schema);
                    // k8s-openapi never makes `metadata` optional; upstream's schemas never require it.
                    if f.required && name != "metadata" {
                        required.push(name.clone());
                    }
                }
                // A Go-embedded struct: its fields are this object's.
                None => {
                    if let Some(r) = f.reference.clone() {
                        self.properties(&r, props, required);
                    }
                }
            }
        }
    }
}

fn properties_have_metadata(schema: &Value) -> bool {
    schema["properties"].get("metadata").is_some()
}

fn gv_base(gv: &GroupVersion) -> String {
    if gv.group.is_empty() {
        format!("/api/{}", gv.version)
    } else {
        format!("/apis/{}/{}", gv.group, gv.version)
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({"group": group, "version": version, "kind": kind})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

/// The operations of one path; `schema_def` is the body/response type.
fn operations(
    info: &ResourceInfo,
    flavor: Flavor,
    schema_def: &str,
    kind: &Value,
    item: bool,
    sub: Option<&str>,
) -> Value {
    let body = |def: &str| match flavor {
        Flavor::V3 => {
            json!({"content": {"application/json": {"schema": flavor.reference(def)}}, "required": true})
        }
        Flavor::V2 => {
            json!({"in": "body", "name": "body", "required": true, "schema": flavor.reference(def)})
        }
    };
    let ok = |def: &str| match flavor {
        Flavor::V3 => {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": flavor.reference(def)}}}})
        }
        Flavor::V2 => json!({"200": {"description": "OK", "schema": flavor.reference(def)}}),
    };
    let validation = query_param(
        "fieldValidation",
        "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields. Valid values are: Ignore, Warn (default) and Strict.",
    );
    let manager = query_param(
        "fieldManager",
        "fieldManager is a name associated with the actor or entity that is making these changes.",
    );
    let dry_run = query_param(
        "dryRun",
        "When present, indicates that modifications should not be persisted.",
    );
    let suffix = sub
        .map(|s| format!("{}{}", info.kind, capitalize(s)))
        .unwrap_or_else(|| info.kind.clone());
    let ns = if info.namespaced { "Namespaced" } else { "" };
    let mut ops = Map::new();
    let mut op = |method: &str, action: &str, id: String, extra: Value| {
        let mut o = json!({"operationId": id, "x-kubernetes-action": action, "x-kubernetes-group-version-kind": kind, "responses": ok(schema_def)});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                o[k] = v;
            }
        }
        ops.insert(method.to_string(), o);
    };
    // Strategic merge needs Go struct metadata: custom resources do not offer it (kubectl then merges).
    let patch_types: Vec<&str> = PATCH_TYPES
        .iter()
        .copied()
        .filter(|t| info.custom.is_none() || !t.contains("strategic"))
        .collect();
    let write_params = json!([dry_run, manager, validation]);
    if item {
        op("get", "get", format!("read{ns}{suffix}"), json!({}));
        let (put_body, patch_body) = match flavor {
            Flavor::V3 => (
                json!({"requestBody": body(schema_def), "parameters": write_params}),
                json!({"requestBody": {"content": patch_types.iter().map(|t| (t.to_string(), json!({"schema": flavor.reference(&format!("{META}Patch"))}))).collect::<Map<_, _>>(), "required": true}, "parameters": write_params}),
            ),
            Flavor::V2 => {
                let mut put_params = write_params.as_array().cloned().unwrap_or_default();
                put_params.push(body(schema_def));
                let mut patch_params = write_params.as_array().cloned().unwrap_or_default();
                patch_params.push(body(&format!("{META}Patch")));
                (
                    json!({"parameters": put_params, "consumes": ["application/json"]}),
                    json!({"parameters": patch_params, "consumes": patch_types}),
                )
            }
        };
        op("put", "put", format!("replace{ns}{suffix}"), put_body);
        op("patch", "patch", format!("patch{ns}{suffix}"), patch_body);
        if sub.is_none() {
            op("delete", "delete", format!("delete{ns}{suffix}"), json!({}));
        }
    } else {
        op("get", "list", format!("list{ns}{suffix}"), json!({}));
        let post = match flavor {
            Flavor::V3 => json!({"requestBody": body(schema_def), "parameters": write_params}),
            Flavor::V2 => {
                let mut p = write_params.as_array().cloned().unwrap_or_default();
                p.push(body(schema_def));
                json!({"parameters": p})
            }
        };
        op("post", "post", format!("create{ns}{suffix}"), post);
        op(
            "delete",
            "deletecollection",
            format!("deletecollection{ns}{suffix}"),
            json!({}),
        );
    }
    Value::Object(ops)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The definition name of a resource's kind: upstream's for built-ins, the reversed group for custom
/// resources (`widgets.example.com` v1 → `com.example.v1.Widget`).
fn kind_definition(r: &ResourceInfo, kind: &str) -> String {
    if r.custom.is_some() {
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        format!("{}.{}.{kind}", reversed.join("."), r.version)
    } else {
        definition(&r.group, &r.version, kind)
    }
}

/// Adds a custom resource's schema (from its CRD) and its list's.
fn add_custom(b: &mut Builder<'_>, r: &ResourceInfo, def: &str, list_def: &str) {
    let Some(custom) = &r.custom else { return };
    let mut schema = custom.schema.clone();
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    let meta = format!("{META}ObjectMeta");
    b.add(&meta);
    schema["properties"]["apiVersion"] = json!({"type": "string"});
    schema["properties"]["kind"] = json!({"type": "string"});
    schema["properties"]["metadata"] = b.flavor.reference(&meta);
    schema["x-kubernetes-group-version-kind"] = json!([gvk(&r.group, &r.version, &r.kind)]);
    b.schemas.insert(def.to_string(), schema);
    let list_meta = format!("{META}ListMeta");
    b.add(&list_meta);
    b.schemas.insert(
        list_def.to_string(),
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": b.flavor.reference(&list_meta),
                "items": {"type": "array", "items": b.flavor.reference(def)},
            },
            "x-kubernetes-group-version-kind": [gvk(&r.group, &r.version, &r.list_kind())],
        }),
    );
}

/// The paths and schemas of one group-version.
fn build(gvs: &[GroupVersion], flavor: Flavor) -> (Map<String, Value>, BTreeMap<String, Value>) {
    let mut b = Builder {
        catalog: catalog(),
        flavor,
        schemas: BTreeMap::new(),
        gvks: BTreeMap::new(),
    };
    for gv in gvs {
        for r in &gv.resources {
            let k = gvk(&r.group, &r.version, &r.kind);
            b.gvks
                .entry(definition(&r.group, &r.version, &r.kind))
                .or_default()
                .push(k.clone());
            b.gvks
                .entry(definition(&r.group, &r.version, &r.list_kind()))
                .or_default()
                .push(gvk(&r.group, &r.version, &r.list_kind()));
        }
    }
    for meta in [
        "Status",
        "DeleteOptions",
        "Patch",
        "WatchEvent",
        "APIResourceList",
    ] {
        b.gvks
            .entry(format!("{META}{meta}"))
            .or_default()
            .push(gvk("", "v1", meta));
    }
    b.schemas.insert(format!("{META}Patch"), json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}));
    let mut paths = Map::new();
    for gv in gvs {
        let base = gv_base(gv);
        for r in &gv.resources {
            let def = kind_definition(r, &r.kind);
            let list_def = kind_definition(r, &r.list_kind());
            if r.create_only {
                // Answered, never stored: no list kind, one POST.
                b.add(&def);
                let kind = gvk(&r.group, &r.version, &r.kind);
                let coll = if r.namespaced {
                    format!("{base}/namespaces/{{namespace}}/{}", r.plural)
                } else {
                    format!("{base}/{}", r.plural)
                };
                let mut c = operations(r, flavor, &def, &kind, true, None);
                if let Some(obj) = c.as_object_mut() {
                    obj.retain(|k, _| k == "post");
                }
                if let Some(post) = c.get_mut("post") {
                    post["responses"] =
                        operations(r, flavor, &def, &kind, true, None)["get"]["responses"].clone();
                }
                paths.insert(coll, c);
                continue;
            }
            if r.custom.is_some() {
                add_custom(&mut b, r, &def, &list_def);
            } else {
                b.add(&def);
                b.add(&list_def);
            }
            let kind = gvk(&r.group, &r.version, &r.kind);
            let (coll, params) = if r.namespaced {
                (
                    format!("{base}/namespaces/{{namespace}}/{}", r.plural),
                    vec![path_param("namespace")],
                )
            } else {
                (format!("{base}/{}", r.plural), vec![])
            };
            let mut c = operations(r, flavor, &list_def, &kind, false, None);
            if let Some(post) = c.get_mut("post") {
                post["responses"] =
                    operations(r, flavor, &def, &kind, true, None)["get"]["responses"].clone();
            }
            c["parameters"] = json!(params);
            paths.insert(coll.clone(), c);
            let mut item_params = params.clone();
            item_params.push(path_param("name"));
            let mut i = operations(r, flavor, &def, &kind, true, None);
            i["parameters"] = json!(item_params);
            paths.insert(format!("{coll}/{{name}}"), i);
            for sub in r
                .subresources
                .iter()
                .filter(|s| matches!(s, Subresource::Status | Subresource::Scale))
            {
                let (sub_def, sub_kind) = match sub {
                    Subresource::Status => (def.clone(), kind.clone()),
                    Subresource::Scale => {
                        b.add(&definition("autoscaling", "v1", "Scale"));
                        (
                            definition("autoscaling", "v1", "Scale"),
                            gvk("autoscaling", "v1", "Scale"),
                        )
                    }
                    Subresource::Binding
                    | Subresource::Eviction
                    | Subresource::Log
                    | Subresource::Exec
                    | Subresource::Attach
                    | Subresource::PortForward
                    | Subresource::Proxy
                    | Subresource::Token
                    | Subresource::Finalize => continue,
                };
                let mut s = operations(r, flavor, &sub_def, &sub_kind, true, Some(sub.name()));
                s["parameters"] = json!(item_params);
                paths.insert(format!("{coll}/{{name}}/{}", sub.name()), s);
            }
        }
    }
    for extra in ["Status", "DeleteOptions", "WatchEvent", "APIResourceList"] {
        b.add(&format!("{META}{extra}"));
    }
    (paths, b.schemas)
}

fn doc_v3(gv: &GroupVersion) -> Value {
    let (paths, schemas) = build(std::slice::from_ref(gv), Flavor::V3);
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn hash(bytes: &[u8]) -> String {
    let digest = Sha512::digest(bytes);
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

fn gv_key(gv: &GroupVersion) -> String {
    gv_base(gv).trim_start_matches('/').to_string()
}

/// Serves `/openapi/v2` and `/openapi/v3[/…]`.
pub fn serve(
    api: &Api,
    req: &Request<Incoming>,
    path: &str,
    query: &Query,
) -> Option<Response<Body>> {
    let path = path.trim_end_matches('/');
    if path == "/openapi/v2" {
        let accept = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .unwrap_or("");
        // kubectl asks for the protobuf form (gnostic's `openapi.v2.Document`) to validate Lists.
        let protobuf = accept.contains("com.github.proto-openapi.spec.v2");
        if !protobuf && !accept.is_empty() && !accept.contains("json") && !accept.contains("*/*") {
            return Some(error_response(&ApiError::not_acceptable(accept)));
        }
        let gvs = api.registry.group_versions();
        let (paths, schemas) = build(&gvs, Flavor::V2);
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION}, "paths": paths, "definitions": schemas});
        if protobuf {
            let bytes = crate::openapi_pb::document(&doc);
            let etag = format!("\"{}\"", hash(&bytes));
            let mut resp = Response::new(crate::handlers::full(bytes));
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                // Asked for with `@v1.0`, answered with `.v1.0` (an `@` is not valid in a media type).
                header::HeaderValue::from_static(
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                ),
            );
            if let Ok(v) = header::HeaderValue::from_str(&etag) {
                headers.insert(header::ETAG, v);
            }
            return Some(resp);
        }
        return Some(json_response(200, &doc));
    }
    let rest = path.strip_prefix("/openapi/v3")?;
    let gvs = api.registry.group_versions();
    if rest.is_empty() {
        let mut index = Map::new();
        for gv in &gvs {
            let bytes = serde_json::to_vec(&doc_v3(gv)).unwrap_or_default();
            let key = gv_key(gv);
            index.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&bytes))}),
            );
        }
        return Some(json_response(200, &json!({"paths": index})));
    }
    let key = rest.trim_start_matches('/');
    let Some(gv) = gvs.iter().find(|gv| gv_key(gv) == key) else {
        return Some(error_response(&ApiError::route_not_found()));
    };
    let bytes = serde_json::to_vec(&doc_v3(gv)).unwrap_or_default();
    let etag = format!("\"{}\"", hash(&bytes));
    let mut resp = Response::new(crate::handlers::full(bytes));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    let cache = if query.get("hash").is_some() {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn apps_document_carries_what_kubectl_looks_for() {
        let reg = Registry::with_builtins();
        let gv = reg
            .group_versions()
            .into_iter()
            .find(|g| g.group == "apps")
            .unwrap();
        let doc = doc_v3(&gv);
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        let schemas = &doc["components"]["schemas"];
        let d = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            d["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(
            d["properties"]["spec"]["description"]
                .as_str()
                .is_some_and(|s| s.contains("desired behavior"))
        );
        assert!(
            d["description"]
                .as_str()
                .is_some_and(|s| s.starts_with("Deployment enables"))
        );
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(
            containers["items"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
        // VolumeSource is inline in Volume.
        assert!(schemas["io.k8s.api.core.v1.Volume"]["properties"]["emptyDir"].is_object());
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["format"],
            "int-or-string"
        );
        assert!(
            schemas["io.k8s.api.core.v1.Container"]["required"]
                .as_array()
                .unwrap()
                .contains(&json!("name"))
        );
    }
}
