//! Custom resources against their CRD's structural schema: defaults, pruning of unknown fields (unless
//! `x-kubernetes-preserve-unknown-fields`), and validation of types, required fields, enums, bounds, lengths
//! and item counts, with upstream's messages.

use serde_json::{Map, Value, json};

use crate::status::Cause;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

/// Fills in `default`s of absent properties (recursively, for objects that are present).
pub fn default(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !obj.contains_key(k)
                        && let Some(d) = s.get("default")
                    {
                        obj.insert(k.clone(), d.clone());
                    }
                    if let Some(child) = obj.get_mut(k) {
                        default(s, child);
                    }
                }
            } else if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in obj.values_mut() {
                    default(add, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    default(s, item);
                }
            }
        }
        _ => {}
    }
}

/// Removes fields the schema does not declare; returns their paths. `root` keeps `apiVersion`, `kind` and
/// `metadata` (the latter pruned to ObjectMeta's fields).
pub fn prune(schema: &Value, value: &mut Value, root: bool) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(schema, value, "", root, &mut removed);
    removed
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, removed: &mut Vec<String>) {
    match value {
        Value::Object(obj) => {
            if (root || schema["x-kubernetes-embedded-resource"] == true)
                && let Some(meta) = obj.get_mut("metadata")
            {
                let before = crate::schema::catalog().unknown_fields(
                    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                    meta,
                    false,
                );
                removed.extend(
                    before
                        .into_iter()
                        .map(|p| join(&join(path, "metadata"), &p)),
                );
                crate::schema::catalog().prune_unknown(
                    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                    meta,
                    false,
                );
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            let keep_all = preserves(schema) || additional.is_some_and(|a| a == true);
            let keep_root = |k: &str| {
                (root || schema["x-kubernetes-embedded-resource"] == true)
                    && matches!(k, "apiVersion" | "kind" | "metadata")
            };
            let keys: Vec<String> = obj.keys().cloned().collect();
            for k in keys {
                if keep_root(&k) {
                    continue;
                }
                let child_schema = match (props.and_then(|p| p.get(&k)), additional) {
                    (Some(s), _) => s.clone(),
                    (None, Some(a)) if a.is_object() => a.clone(),
                    (None, _) if keep_all => continue,
                    (None, _) => {
                        obj.remove(&k);
                        removed.push(join(path, &k));
                        continue;
                    }
                };
                if let Some(child) = obj.get_mut(&k) {
                    prune_at(&child_schema, child, &join(path, &k), false, removed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(s, item, &format!("{path}[{i}]"), false, removed);
                }
            }
        }
        _ => {}
    }
}

/// Validates a (defaulted, pruned) custom resource.
pub fn validate(schema: &Value, value: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    check(schema, value, "", true, &mut causes);
    causes
}

fn check(schema: &Value, value: &Value, path: &str, root: bool, causes: &mut Vec<Cause>) {
    let shown = if path.is_empty() {
        "body".to_string()
    } else {
        path.to_string()
    };
    if value.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!(
                    "Invalid value: \"null\": {shown} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
                field: shown,
            });
        }
        return;
    }
    let got = type_name(value);
    if schema["x-kubernetes-int-or-string"] == true {
        if got != "integer" && got != "string" {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: \"{got}\": {shown} in body must be of type integer or string: \"{got}\""),
                field: shown,
            });
        }
        return;
    }
    if let Some(want) = schema["type"].as_str() {
        let ok = want == got || (want == "number" && got == "integer");
        if !ok {
            causes.push(Cause {
                reason: "FieldValueTypeInvalid",
                message: format!(
                    "Invalid value: \"{got}\": {shown} in body must be of type {want}: \"{got}\""
                ),
                field: shown,
            });
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ),
            field: shown.clone(),
        });
    }
    let mut bound = |cond: bool, detail: String| {
        if cond {
            causes.push(Cause::invalid(
                shown.clone(),
                value,
                &format!("{shown} in body {detail}"),
            ));
        }
    };
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64() {
            bound(
                n < min,
                format!("should be greater than or equal to {}", schema["minimum"]),
            );
        }
        if let Some(max) = schema["maximum"].as_f64() {
            bound(
                n > max,
                format!("should be less than or equal to {}", schema["maximum"]),
            );
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64() {
            bound(len < min, format!("should be at least {min} chars long"));
        }
        if let Some(max) = schema["maxLength"].as_u64() {
            bound(len > max, format!("may not be more than {max} bytes"));
        }
    }
    if let Some(items) = value.as_array() {
        let n = items.len() as u64;
        if let Some(min) = schema["minItems"].as_u64() {
            bound(n < min, format!("should have at least {min} items"));
        }
        if let Some(max) = schema["maxItems"].as_u64() {
            bound(n > max, format!("should have at most {max} items"));
        }
        if let Some(s) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(s, item, &format!("{path}[{i}]"), false, causes);
            }
        }
    }
    if let Some(obj) = value.as_object() {
        for req in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !obj.contains_key(req) {
                causes.push(Cause::required(join(path, req)));
            }
        }
        let props = schema["properties"].as_object();
        for (k, v) in obj {
            if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match (
                props.and_then(|p| p.get(k)),
                schema.get("additionalProperties"),
            ) {
                (Some(s), _) => check(s, v, &join(path, k), false, causes),
                (None, Some(a)) if a.is_object() => check(a, v, &join(path, k), false, causes),
                _ => {}
            }
        }
    }
}

/// A value's `scale` view: the number at a `.spec.replicas`-style path.
pub fn at_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let pointer: String = path
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| format!("/{p}"))
        .collect();
    value.pointer(&pointer)
}

/// Sets the value at a `.spec.replicas`-style path, creating objects on the way.
pub fn set_path(value: &mut Value, path: &str, v: Value) {
    let parts: Vec<&str> = path.split('.').filter(|p| !p.is_empty()).collect();
    let mut cur = value;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i == parts.len() - 1 {
            obj.insert(p.to_string(), v);
            return;
        }
        cur = obj.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "default": 3},
                "color": {"type": "string", "enum": ["red", "blue"]},
                "port": {"x-kubernetes-int-or-string": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}})
    }

    #[test]
    fn defaults_prune_and_validate() {
        let mut cr = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "junk": 1},
            "spec": {"color": "red", "extra": true, "free": {"anything": {"goes": 1}}, "labels": {"a": "b"}}, "top": 1});
        default(&schema()["properties"]["spec"].clone(), &mut cr["spec"]);
        let removed = prune(&schema(), &mut cr, true);
        assert_eq!(removed, ["metadata.junk", "spec.extra", "top"]);
        assert_eq!(cr["spec"]["size"], 3);
        assert_eq!(cr["spec"]["free"]["anything"]["goes"], 1);
        assert!(
            validate(&schema(), &cr).is_empty(),
            "{:?}",
            validate(&schema(), &cr)
        );
        let bad = json!({"spec": {"size": 0, "color": "pink", "port": true, "labels": {"a": 1}}});
        let causes = validate(&schema(), &bad);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.color", "spec.labels.a", "spec.port", "spec.size"],
            "{causes:?}"
        );
        let missing = validate(&schema(), &json!({"spec": {"size": "x"}}));
        assert_eq!(
            missing[0].message,
            r#"Invalid value: "string": spec.size in body must be of type integer: "string""#
        );
        let mut v = json!({});
        set_path(&mut v, ".spec.replicas", json!(4));
        assert_eq!(at_path(&v, ".spec.replicas"), Some(&json!(4)));
    }
}
