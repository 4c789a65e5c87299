//! LimitRanger: a namespace's LimitRanges give a new pod's containers their default requests and limits
//! (recorded in the `kubernetes.io/limit-ranger` annotation, as upstream), then the pod must stay within
//! each range's min, max and max limit/request ratio, per container and per pod.

use serde_json::{Value, json};

use super::quantity::Quantity;

/// A LimitRange item after upstream's defaulting.
fn items(ranges: &[Value]) -> Vec<&Value> {
    ranges
        .iter()
        .flat_map(|r| r["spec"]["limits"].as_array().into_iter().flatten())
        .collect()
}

fn containers_mut(spec: &mut Value) -> Vec<(&'static str, &mut Value)> {
    let mut out = Vec::new();
    let Some(map) = spec.as_object_mut() else {
        return out;
    };
    for (key, list) in map.iter_mut() {
        let kind = match key.as_str() {
            "initContainers" => "init container",
            "containers" => "container",
            _ => continue,
        };
        if let Value::Array(cs) = list {
            for c in cs.iter_mut().filter(|c| c.is_object()) {
                out.push((kind, c));
            }
        }
    }
    // Init containers first, as upstream walks them.
    out.sort_by_key(|(kind, _)| *kind != "init container");
    out
}

/// Fills missing requests and limits from the Container defaults; returns the annotation text (if any).
pub fn default_pod(ranges: &[Value], pod: &mut Value) -> Option<String> {
    let items = items(ranges);
    let mut notes = Vec::new();
    for (kind, c) in containers_mut(&mut pod["spec"]) {
        let name = c["name"].as_str().unwrap_or("").to_string();
        if !c["resources"].is_object() {
            c["resources"] = json!({});
        }
        for (field, default_field, word) in [
            ("requests", "defaultRequest", "request"),
            ("limits", "default", "limit"),
        ] {
            let mut set = Vec::new();
            for item in items.iter().filter(|i| i["type"] == "Container") {
                for (res, v) in item[default_field].as_object().into_iter().flatten() {
                    if !c["resources"][field].is_object() {
                        c["resources"][field] = json!({});
                    }
                    if c["resources"][field].get(res).is_none() {
                        c["resources"][field][res] = v.clone();
                        set.push(res.clone());
                    }
                }
            }
            if !set.is_empty() {
                notes.push(format!("{} {word} for {kind} {name}", set.join(", ")));
            }
        }
    }
    (!notes.is_empty()).then(|| format!("LimitRanger plugin set: {}", notes.join("; ")))
}

fn q(v: &Value) -> Option<Quantity> {
    v.as_str().and_then(Quantity::parse).or_else(|| {
        v.as_i64().map(|n| Quantity {
            nanos: n as i128 * 1_000_000_000,
            binary: false,
        })
    })
}

/// Checks one (requests, limits) pair against an item's bounds; `what` is `Container` or `Pod`.
fn check(item: &Value, what: &str, requests: &Value, limits: &Value, errs: &mut Vec<String>) {
    for (res, min) in item["min"].as_object().into_iter().flatten() {
        let Some(minq) = q(min) else { continue };
        match q(&requests[res]) {
            None => errs.push(format!(
                "minimum {res} usage per {what} is {minq}.  No request is specified"
            )),
            Some(r) if r < minq => errs.push(format!(
                "minimum {res} usage per {what} is {minq}, but request is {r}"
            )),
            _ => {}
        }
    }
    for (res, max) in item["max"].as_object().into_iter().flatten() {
        let Some(maxq) = q(max) else { continue };
        match q(&limits[res]) {
            None => errs.push(format!(
                "maximum {res} usage per {what} is {maxq}.  No limit is specified"
            )),
            Some(l) if l > maxq => errs.push(format!(
                "maximum {res} usage per {what} is {maxq}, but limit is {l}"
            )),
            _ => {}
        }
    }
    for (res, ratio) in item["maxLimitRequestRatio"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let (Some(ratio_q), Some(l), Some(r)) = (q(ratio), q(&limits[res]), q(&requests[res]))
        else {
            continue;
        };
        if r.nanos > 0
            && l.nanos.saturating_mul(1_000_000_000) > ratio_q.nanos.saturating_mul(r.nanos)
        {
            let actual = l.nanos as f64 / r.nanos as f64;
            errs.push(format!(
                "{res} max limit to request ratio per {what} is {ratio_q}, but provided ratio is {actual:.6}"
            ));
        }
    }
}

/// The range violations of a pod (after defaulting), as upstream words them.
pub fn validate_pod(ranges: &[Value], pod: &Value) -> Vec<String> {
    let items = items(ranges);
    let mut errs = Vec::new();
    let spec = &pod["spec"];
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .collect();
    for item in &items {
        match item["type"].as_str() {
            Some("Container") => {
                for c in &all {
                    check(
                        item,
                        "Container",
                        &c["resources"]["requests"],
                        &c["resources"]["limits"],
                        &mut errs,
                    );
                }
            }
            Some("Pod") => {
                // The pod's total: the sum of its containers (init containers run alone: the largest).
                let mut requests = serde_json::Map::new();
                let mut limits = serde_json::Map::new();
                for (field, out) in [("requests", &mut requests), ("limits", &mut limits)] {
                    let mut keys: Vec<String> = Vec::new();
                    for c in &all {
                        for k in c["resources"][field]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, _)| k)
                        {
                            if !keys.contains(k) {
                                keys.push(k.clone());
                            }
                        }
                    }
                    for k in keys {
                        let mut sum = Quantity::zero();
                        let mut complete = true;
                        for c in spec["containers"].as_array().into_iter().flatten() {
                            match q(&c["resources"][field][&k]) {
                                Some(v) => sum = sum.plus(v),
                                None => complete = false,
                            }
                        }
                        for c in spec["initContainers"].as_array().into_iter().flatten() {
                            if let Some(v) = q(&c["resources"][field][&k])
                                && v > sum
                            {
                                sum = v;
                            }
                        }
                        if complete {
                            out.insert(k, Value::String(sum.to_string()));
                        }
                    }
                }
                check(
                    item,
                    "Pod",
                    &Value::Object(requests),
                    &Value::Object(limits),
                    &mut errs,
                );
            }
            _ => {}
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds_as_upstream() {
        let ranges = vec![json!({"spec": {"limits": [{"type": "Container",
            "default": {"cpu": "500m", "memory": "128Mi"}, "defaultRequest": {"cpu": "250m", "memory": "64Mi"},
            "max": {"cpu": "1"}}]}})];
        let mut pod = json!({"spec": {"containers": [{"name": "c"}, {"name": "d", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}}]}});
        let note = default_pod(&ranges, &mut pod).unwrap();
        assert_eq!(
            note,
            "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c; memory request for container d; memory limit for container d"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
        assert_eq!(
            validate_pod(&ranges, &pod),
            vec!["maximum cpu usage per Container is 1, but limit is 2".to_string()]
        );
    }
}
