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

/// Whether objects of `info` are stored in another version's form.
pub fn converts(info: &ResourceInfo) -> bool {
    info.group == "events.k8s.io" && info.kind == "Event" && info.custom.is_none()
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

/// The stored (core/v1) form of an object written through `info`.
pub fn to_storage_form(info: &ResourceInfo, obj: Value) -> Value {
    if converts(info) {
        rename(obj, "v1", true)
    } else {
        obj
    }
}

/// The form `info` serves of a stored object.
pub fn to_served_form(info: &ResourceInfo, obj: Value) -> Value {
    if converts(info) {
        rename(obj, "events.k8s.io/v1", false)
    } else {
        obj
    }
}

/// [`to_served_form`] for events.k8s.io/v1 (a plain function for list options).
pub fn core_event_to_events_v1(obj: Value) -> Value {
    rename(obj, "events.k8s.io/v1", false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_round_trip() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "message": "hi", "reason": "Started", "count": 2, "reportingComponent": "kubelet", "type": "Normal"});
        let served = core_event_to_events_v1(core.clone());
        assert_eq!(served["regarding"]["name"], "p");
        assert_eq!(served["note"], "hi");
        assert_eq!(served["deprecatedCount"], 2);
        assert_eq!(served["reportingController"], "kubelet");
        assert_eq!(served["apiVersion"], "events.k8s.io/v1");
        assert_eq!(rename(served, "v1", true), core);
    }
}
