//! Conversion between the two versions of one stored kind: `events.k8s.io/v1` Events are stored as core
//! `v1` Events (one etcd key space, as upstream), renamed on the way in and out.

use serde_json::{Map, Value};

use crate::resources::ResourceInfo;

/// (events.k8s.io/v1 field, core/v1 field) for the renamed fields; the rest share names.
const RENAMES: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn is_events_v1(info: &ResourceInfo) -> bool {
    info.group == "events.k8s.io" && info.kind == "Event" && info.custom.is_none()
}

/// Whether objects of `info` may be stored in another version's form: events.k8s.io/v1, and custom
/// resources served in a version other than their CRD's storage version (conversion strategy None: only
/// `apiVersion` differs).
pub fn converts(info: &ResourceInfo) -> bool {
    is_events_v1(info)
        || info
            .custom
            .as_ref()
            .is_some_and(|c| c.storage_version != info.version)
}

fn rename(obj: Value, api_version: &str, from_events: bool) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = RENAMES.iter().find_map(|(events, core)| {
            if from_events && k == *events {
                Some(*core)
            } else if !from_events && k == *core {
                Some(*events)
            } else {
                None
            }
        });
        out.insert(renamed.map_or(k, str::to_string), v);
    }
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from("Event"));
    Value::Object(out)
}

/// The stored form of an object written through `info`.
pub fn to_storage_form(info: &ResourceInfo, mut obj: Value) -> Value {
    if is_events_v1(info) {
        return rename(obj, "v1", true);
    }
    if let Some(custom) = info
        .custom
        .as_ref()
        .filter(|c| c.storage_version != info.version)
    {
        obj["apiVersion"] = Value::from(format!("{}/{}", info.group, custom.storage_version));
    }
    obj
}

/// The form `info` serves of a stored object.
pub fn to_served_form(info: &ResourceInfo, mut obj: Value) -> Value {
    if is_events_v1(info) {
        return rename(obj, "events.k8s.io/v1", false);
    }
    if info.custom.is_some() {
        obj["apiVersion"] = Value::from(info.api_version());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "message": "hi", "reason": "Started", "count": 2, "reportingComponent": "kubelet", "type": "Normal"});
        let served = rename(core.clone(), "events.k8s.io/v1", false);
        assert_eq!(served["regarding"]["name"], "p");
        assert_eq!(served["note"], "hi");
        assert_eq!(served["deprecatedCount"], 2);
        assert_eq!(served["reportingController"], "kubelet");
        assert_eq!(served["apiVersion"], "events.k8s.io/v1");
        assert_eq!(rename(served, "v1", true), core);
    }
}
