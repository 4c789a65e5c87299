//! Object metadata helpers: timestamps, uids, generated names, and upstream's name/label/annotation validation.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::resources::NameRule;
use crate::status::Cause;

/// Now as RFC 3339 in UTC with second precision (`metav1.Time`).
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The strings of a JSON array (anything else gives none).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// A new object uid.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The 5-character suffix upstream appends to `generateName` (consonants and digits, no vowels).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// `metadata` of an object (created if missing or not an object).
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

/// Problems with a name under `rule` (upstream's messages).
pub fn name_errors(name: &str, rule: NameRule) -> Vec<String> {
    let mut errs = Vec::new();
    match rule {
        NameRule::Label => {
            if name.len() > 63 {
                errs.push("must be no more than 63 characters".to_string());
            }
            if !is_label(&name[..name.len().min(63)]) || name.is_empty() {
                errs.push(DNS1123_LABEL_MSG.to_string());
            }
        }
        NameRule::Label1035 => {
            if name.len() > 63 {
                errs.push("must be no more than 63 characters".to_string());
            }
            if !is_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                errs.push(DNS1035_LABEL_MSG.to_string());
            }
        }
        NameRule::Subdomain => {
            if name.len() > 253 {
                errs.push("must be no more than 253 characters".to_string());
            }
            if !is_subdomain(name) {
                errs.push(DNS1123_SUBDOMAIN_MSG.to_string());
            }
        }
        NameRule::PathSegment => {}
    }
    if name == "." || name == ".." {
        errs.push(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            errs.push(format!("may not contain '{bad}'"));
        }
    }
    errs
}

fn is_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && (p.is_empty() || !is_subdomain(p))
    {
        return Err("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".into());
    }
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if b.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if b.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !b.iter().all(ok_char)
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    Ok(())
}

fn is_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    let b = s.as_bytes();
    if b.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    let ok_char = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if !b.iter().all(ok_char)
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into());
    }
    Ok(())
}

/// Validates `metadata` of an object to be stored (name, namespace, labels, annotations).
pub fn validate_metadata(obj: &Value, rule: NameRule, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
        causes.push(Cause::required("metadata"));
        return causes;
    };
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required("metadata.name")),
        Some(name) => {
            for e in name_errors(name, rule) {
                causes.push(Cause::invalid("metadata.name", &Value::from(name), &e));
            }
        }
    }
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    if namespaced && ns.is_empty() {
        causes.push(Cause::required("metadata.namespace"));
    }
    if !namespaced && !ns.is_empty() {
        causes.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = meta.get("labels") {
        match labels.as_object() {
            Some(labels) => {
                for (k, v) in labels {
                    if let Err(e) = is_qualified_name(k) {
                        causes.push(Cause::invalid(
                            "metadata.labels",
                            &Value::from(k.as_str()),
                            &e,
                        ));
                    }
                    match v.as_str() {
                        Some(v) => {
                            if let Err(e) = is_label_value(v) {
                                causes.push(Cause::invalid("metadata.labels", &Value::from(v), &e));
                            }
                        }
                        None => {
                            causes.push(Cause::invalid("metadata.labels", v, "must be a string"))
                        }
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(Cause::invalid("metadata.labels", labels, "must be a map")),
        }
    }
    if let Some(annotations) = meta.get("annotations") {
        match annotations.as_object() {
            Some(map) => {
                let mut total = 0;
                for (k, v) in map {
                    if let Err(e) = is_qualified_name(&k.to_ascii_lowercase()) {
                        causes.push(Cause::invalid(
                            "metadata.annotations",
                            &Value::from(k.as_str()),
                            &e,
                        ));
                    }
                    total += k.len() + v.as_str().map_or(0, str::len);
                }
                if total > 256 * 1024 {
                    causes.push(Cause {
                        reason: "FieldValueTooLong",
                        message: "Too long: must have at most 262144 bytes".into(),
                        field: "metadata.annotations".into(),
                    });
                }
            }
            None if annotations.is_null() => {}
            None => causes.push(Cause::invalid(
                "metadata.annotations",
                annotations,
                "must be a map",
            )),
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn names_follow_upstream_rules() {
        assert!(name_errors("web-1", NameRule::Label1035).is_empty());
        assert!(!name_errors("1web", NameRule::Label1035).is_empty());
        assert!(name_errors("a.b-c", NameRule::Subdomain).is_empty());
        assert!(!name_errors("Upper", NameRule::Subdomain).is_empty());
        assert!(!name_errors("a.b", NameRule::Label).is_empty());
        assert!(name_errors("system:controller:x", NameRule::PathSegment).is_empty());
        assert!(!name_errors("a/b", NameRule::PathSegment).is_empty());
        assert_eq!(name_suffix().len(), 5);
    }

    #[test]
    fn labels_are_checked() {
        let obj = serde_json::json!({"metadata": {"name": "x", "namespace": "d",
            "labels": {"app": "ok", "bad key!": "v", "k": "-bad"}}});
        let causes = validate_metadata(&obj, NameRule::Subdomain, true);
        assert_eq!(causes.len(), 2, "{causes:?}");
    }
}
