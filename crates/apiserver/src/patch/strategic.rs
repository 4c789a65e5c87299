//! Strategic merge patch for built-in kinds: JSON merge semantics, except that lists with a
//! `patchStrategy: merge` merge by their `patchMergeKey` (or as sets of primitives), and the directives
//! `$patch` (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/<list>` and
//! `$deleteFromPrimitiveList/<list>` apply. List metadata comes from the type table.

use serde_json::{Map, Value};

use crate::schema::{Catalog, Field, Kind};

/// Why a strategic merge patch cannot apply.
#[derive(Debug, PartialEq)]
pub struct SmpError(pub String);

const ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies `patch` to `original`, both JSON objects of type `def`.
pub fn apply(
    catalog: &Catalog,
    def: &str,
    original: &Value,
    patch: &Value,
) -> Result<Value, SmpError> {
    let Value::Object(p) = patch else {
        return Err(SmpError(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    match merge_map(catalog, Some(def), original.as_object(), p)? {
        Some(m) => Ok(Value::Object(m)),
        None => Ok(Value::Object(Map::new())),
    }
}

/// Removes directive keys (`$patch`, `$retainKeys`, …) from a value being inserted whole.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|v| {
                    v.get("$patch")
                        .is_none_or(|_| v.as_object().is_none_or(|o| o.len() != 1))
                })
                .map(strip)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn field<'c>(catalog: &'c Catalog, def: Option<&str>, name: &str) -> Option<&'c Field> {
    let ty = catalog.get(def?)?;
    if let Some(f) = ty.by_json(name) {
        return Some(f);
    }
    // Go-embedded structs: look through inline fields.
    ty.fields
        .iter()
        .filter(|f| f.json.is_none())
        .find_map(|f| field(catalog, f.reference.as_deref(), name))
}

/// Merges patch map `p` into `o`; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    catalog: &Catalog,
    def: Option<&str>,
    o: Option<&Map<String, Value>>,
    p: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, SmpError> {
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            return match strip(&Value::Object(p.clone())) {
                Value::Object(m) => Ok(Some(m)),
                _ => Ok(Some(Map::new())),
            };
        }
        Some("merge") | None => {}
        Some(other) => return Err(SmpError(format!("unknown patch type {other:?} in $patch"))),
    }
    let mut out = o.cloned().unwrap_or_default();
    for (k, pv) in p {
        if k.starts_with('$') {
            continue;
        }
        let f = field(catalog, def, k);
        if pv.is_null() {
            out.remove(k);
            continue;
        }
        let merged = merge_value(catalog, f, out.get(k), pv)?;
        match merged {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    for (k, pv) in p {
        if let Some(list) = k.strip_prefix(DELETE_PRIMITIVE) {
            let remove = pv.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(items)) = out.get_mut(list) {
                items.retain(|i| !remove.contains(i));
            }
        }
    }
    for (k, pv) in p {
        if let Some(list) = k.strip_prefix(ORDER) {
            let f = field(catalog, def, list);
            if let (Some(Value::Array(items)), Some(order)) = (out.get_mut(list), pv.as_array()) {
                reorder(items, order, f.and_then(|f| f.patch_merge_key.as_deref()));
            }
        }
    }
    if let Some(retain) = p.get("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| SmpError("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Some(out))
}

fn merge_value(
    catalog: &Catalog,
    f: Option<&Field>,
    o: Option<&Value>,
    pv: &Value,
) -> Result<Option<Value>, SmpError> {
    match (f, pv) {
        // A nested struct or a map of structs.
        (Some(f), Value::Object(pm)) if !f.repeated => {
            let reference = f.reference.as_deref();
            match &f.kind {
                Kind::Map(inner) if **inner == Kind::Message => {
                    // Keys are free-form; each value is a struct.
                    let mut out = o.and_then(Value::as_object).cloned().unwrap_or_default();
                    for (k, v) in pm {
                        if v.is_null() {
                            out.remove(k);
                        } else if let Value::Object(vm) = v {
                            if let Some(m) = merge_map(
                                catalog,
                                reference,
                                out.get(k).and_then(Value::as_object),
                                vm,
                            )? {
                                out.insert(k.clone(), Value::Object(m));
                            } else {
                                out.remove(k);
                            }
                        } else {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                    Ok(Some(Value::Object(out)))
                }
                Kind::Message
                    if crate::schema::catalog()
                        .get(reference.unwrap_or(""))
                        .is_some() =>
                {
                    Ok(
                        merge_map(catalog, reference, o.and_then(Value::as_object), pm)?
                            .map(Value::Object),
                    )
                }
                // Plain maps (labels, data) and wrapper types merge as JSON merge patch.
                _ => {
                    Ok(merge_map(catalog, None, o.and_then(Value::as_object), pm)?
                        .map(Value::Object))
                }
            }
        }
        (Some(f), Value::Array(pl)) if f.repeated => {
            merge_list(catalog, f, o.and_then(Value::as_array), pl).map(Some)
        }
        // Untyped objects merge as JSON merge patch.
        (None, Value::Object(pm)) => {
            Ok(merge_map(catalog, None, o.and_then(Value::as_object), pm)?.map(Value::Object))
        }
        _ => Ok(Some(strip(pv))),
    }
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.as_object()?.get(key)
}

fn merge_list(
    catalog: &Catalog,
    f: &Field,
    o: Option<&Vec<Value>>,
    pl: &[Value],
) -> Result<Value, SmpError> {
    // `[{"$patch": "replace"}, …]` replaces the whole list.
    let replace = pl.iter().any(|i| {
        i.get("$patch").and_then(Value::as_str) == Some("replace")
            && i.as_object().is_some_and(|m| m.len() == 1)
    });
    let merging = f
        .patch_strategy
        .as_deref()
        .is_some_and(|s| s.split(',').any(|p| p == "merge"));
    if replace || !merging || o.is_none() {
        return Ok(strip(&Value::Array(pl.to_vec())));
    }
    let mut out = o.cloned().unwrap_or_default();
    match (&f.kind, f.patch_merge_key.as_deref()) {
        (Kind::Message, Some(key)) => {
            for item in pl {
                let Some(k) = key_of(item, key) else {
                    return Err(SmpError(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let pos = out.iter().position(|e| key_of(e, key) == Some(k));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let Value::Object(pm) = item else { continue };
                        match merge_map(catalog, f.reference.as_deref(), out[i].as_object(), pm)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    (None, false) => out.push(strip(item)),
                }
            }
        }
        // A set of primitives (finalizers): union, keeping order.
        _ => {
            for item in pl {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
        }
    }
    Ok(Value::Array(out))
}

/// Orders `items` as `order` lists them (by merge key, or by value for primitives); others keep their
/// relative order after them.
fn reorder(items: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => key_of(v, k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut ordered = Vec::with_capacity(items.len());
    for o in order {
        let want = id(o);
        if let Some(pos) = items.iter().position(|i| id(i) == want) {
            ordered.push(items.remove(pos));
        }
    }
    ordered.append(items);
    *items = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::catalog;
    use serde_json::json;

    const DEPLOY: &str = "io.k8s.api.apps.v1.Deployment";

    fn smp(o: Value, p: Value) -> Value {
        apply(catalog(), DEPLOY, &o, &p).unwrap()
    }

    fn base() -> Value {
        json!({"metadata": {"name": "d", "labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
            "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let out = smp(
            base(),
            json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}}),
        );
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
        assert_eq!(cs[0]["ports"], json!([{"containerPort": 80}]));
        assert_eq!(cs[1]["name"], "side");
    }

    #[test]
    fn directives() {
        // $patch: delete on a list element, null deletes a field, primitive sets union.
        let out = smp(
            base(),
            json!({"metadata": {"labels": {"a": null, "b": "2"}, "finalizers": ["y"]},
            "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // $retainKeys drops what the patch does not keep; $patch: replace replaces a map.
        let out = smp(
            base(),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        let out = smp(
            base(),
            json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "only", "image": "i"}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"],
            json!({"containers": [{"name": "only", "image": "i"}]})
        );
        // $deleteFromPrimitiveList and $setElementOrder.
        let out = smp(
            base(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]},
            "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]}}}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!([]));
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["name"],
            "side"
        );
        // Lists without a merge strategy are replaced (args), a missing merge key is an error.
        let out = smp(
            base(),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "args": ["a"]}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["a"])
        );
        assert!(
            apply(
                catalog(),
                DEPLOY,
                &base(),
                &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})
            )
            .is_err()
        );
    }
}
