//! Server-side printing: the `meta.k8s.io/v1` Table kubectl asks for, with upstream's columns per built-in
//! kind (`pkg/printers/internalversion`), `-o wide` columns at priority 1, and rows carrying the object's
//! metadata (or the whole object with `includeObject=Object`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

mod builtin;

use builtin::{Col, NAME, cells, columns};

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2026-11-27T12:00:00Z`, fractions ignored).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Upstream's `duration.HumanDuration` (`5m2s`, `3h`, `2d4h`, `3y12d`).
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// "5m" since a timestamp, `<unknown>` when absent (upstream's `translateTimestampSince`).
pub(super) fn since(ts: &Value) -> String {
    match ts.as_str().and_then(parse_rfc3339) {
        Some(t) => human_duration(Duration::from_secs((now() - t).max(0) as u64)),
        None => "<unknown>".into(),
    }
}

/// How much of each object a Table row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// The column definitions for `kind` (upstream's default Name/Created At when it has no printer).
pub fn column_definitions(kind: &str) -> Vec<Value> {
    let cols = columns(kind).unwrap_or_else(|| vec![NAME, Col("Created At", "date", 0)]);
    cols.iter()
        .map(|Col(name, ty, priority)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect()
}

/// One row for `obj`.
pub fn row(kind: &str, obj: &Value, include: Include) -> Value {
    let mut cells = Vec::new();
    if kind != "Event" {
        cells.push(obj["metadata"]["name"].clone());
    }
    cells.extend(cells_checked(kind, obj));
    row_of(cells, obj, include)
}

/// A row: its cells and as much of the object as `includeObject` asks for.
fn row_of(cells: Vec<Value>, obj: &Value, include: Include) -> Value {
    let mut row = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Metadata => {
            row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]});
        }
        Include::Object => row["object"] = obj.clone(),
    }
    row
}

/// The cells, cut or padded to the column count so a row always matches its definitions.
fn cells_checked(kind: &str, obj: &Value) -> Vec<Value> {
    let want = columns(kind).map_or(1, |c| c.len() - usize::from(kind != "Event"));
    let mut c = cells(kind, obj);
    c.resize(want, Value::from(""));
    c
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`, `.a[*].b`,
/// `.a[?(@.type=="Ready")].status`. Several matches are joined with commas.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut current: Vec<&Value> = vec![obj];
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let sel = &r[..end];
            rest = &r[end + 1..];
            current = if sel == "*" {
                current
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .collect()
            } else if let Ok(i) = sel.parse::<usize>() {
                current.into_iter().filter_map(|v| v.get(i)).collect()
            } else if let Some(filter) = sel.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                current
                    .into_iter()
                    .flat_map(|v| v.as_array().into_iter().flatten())
                    .filter(|item| match item.get(field.trim()) {
                        Some(Value::String(s)) => s == want,
                        Some(other) => *other == want,
                        None => false,
                    })
                    .collect()
            } else {
                return None;
            };
        } else {
            return None;
        }
    }
    match current.len() {
        0 => None,
        1 => Some(current[0].clone()),
        _ => Some(Value::from(
            current
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

/// A Table of `items` of a resource: a custom resource's printer columns, or the built-in printer.
pub fn table_for(
    info: &crate::resources::ResourceInfo,
    items: &[Value],
    list_meta: Value,
    include: Include,
) -> Value {
    let Some(custom) = &info.custom else {
        return table(&info.kind, items, list_meta, include);
    };
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
    ];
    defs.extend(custom.columns.iter().map(|c| {
        json!({"name": c.name, "type": c.kind, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            cells.extend(
                custom
                    .columns
                    .iter()
                    .map(|c| match json_path(obj, &c.json_path) {
                        // Date columns print as ages, as upstream's custom resource table convertor does.
                        Some(Value::String(ts)) if c.kind == "date" => {
                            Value::from(since(&Value::from(ts)))
                        }
                        Some(v) => v,
                        None => Value::Null,
                    }),
            );
            row_of(cells, obj, include)
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": defs, "rows": rows})
}

/// A Table of `items` for `kind`, with list metadata.
pub fn table(kind: &str, items: &[Value], list_meta: Value, include: Include) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions(kind),
        "rows": items.iter().map(|o| row(kind, o, include)).collect::<Vec<_>>(),
    })
}

/// Whether the Accept header asks for a `meta.k8s.io/v1` Table.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|t| {
            let t = t.replace(' ', "");
            t.contains("as=Table")
                && t.contains("g=meta.k8s.io")
                && t.contains("v=v1")
                && !t.contains("v=v1beta1")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_as_upstream() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(302)), "5m2s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 120)), "3h2m");
        assert_eq!(human_duration(Duration::from_secs(50 * 3600)), "2d2h");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-18T11:06:40Z"), Some(1_795_000_000));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00.123Z"), Some(951_782_400));
    }

    #[test]
    fn rows_match_their_columns() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}}, {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row("Pod", &pod, Include::Metadata);
        let cells = r["cells"].as_array().unwrap();
        assert_eq!(cells.len(), column_definitions("Pod").len());
        assert_eq!(
            &cells[..4],
            &[
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3")
            ]
        );
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let cells = row("Service", &svc, Include::None)["cells"].clone();
        assert_eq!(
            cells,
            json!([
                "s",
                "NodePort",
                "10.43.0.9",
                "<none>",
                "80:30080/TCP",
                "<unknown>",
                "app=web"
            ])
        );
        let cm = row(
            "ClusterRole",
            &json!({"metadata": {"name": "r", "creationTimestamp": "2026-01-01T00:00:00Z"}}),
            Include::None,
        );
        assert_eq!(cm["cells"], json!(["r", "2026-01-01T00:00:00Z"]));
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"items": [{"n": 1}, {"n": 2}]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.items[*].n"), Some(json!("1,2")));
        assert_eq!(json_path(&o, ".spec.items[1].n"), Some(json!(2)));
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }
}
