//! The audit log (`--audit-log-path`): one `audit.k8s.io/v1` Event per request as a JSON line, at the
//! `ResponseComplete` stage (`ResponseStarted` for watches and upgraded connections, which are logged as
//! they start), at the level the first matching rule of `--audit-policy-file` gives
//! (`Metadata` for every request when there is no policy). Levels that record bodies (`Request`,
//! `RequestResponse`) are refused at start rather than silently recorded as less.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::authz::Attributes;

/// A failure to set up auditing.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AuditError {
    path: PathBuf,
    message: String,
}

/// One policy rule (the fields upstream's policy matches on).
#[derive(Debug, Clone, Default)]
struct Rule {
    level: String,
    users: Vec<String>,
    user_groups: Vec<String>,
    verbs: Vec<String>,
    /// (group, resources, resourceNames)
    resources: Vec<(String, Vec<String>, Vec<String>)>,
    namespaces: Vec<String>,
    non_resource_urls: Vec<String>,
}

impl Rule {
    fn matches(&self, a: &Attributes) -> bool {
        if !self.users.is_empty() && !self.users.contains(&a.user.name) {
            return false;
        }
        if !self.user_groups.is_empty() && !self.user_groups.iter().any(|g| a.user.in_group(g)) {
            return false;
        }
        if !self.verbs.is_empty() && !self.verbs.contains(&a.verb) {
            return false;
        }
        if !a.resource_request {
            // Rules naming resources or namespaces apply to resource requests only.
            if !self.resources.is_empty() || !self.namespaces.is_empty() {
                return false;
            }
            if self.non_resource_urls.is_empty() {
                return true;
            }
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            });
        }
        if !self.non_resource_urls.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&a.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        self.resources.iter().any(|(group, resources, names)| {
            *group == a.group
                && (resources.is_empty()
                    || resources.iter().any(|r| {
                        *r == "*"
                            || *r == combined
                            || (*r == format!("{}/*", a.resource) && !a.subresource.is_empty())
                            || r.strip_prefix("*/").is_some_and(|s| s == a.subresource)
                    }))
                && (names.is_empty() || names.contains(&a.name))
        })
    }
}

/// Parses an `audit.k8s.io/v1` Policy (YAML or JSON).
fn parse_policy(path: &Path) -> Result<Vec<Rule>, AuditError> {
    let err = |message: String| AuditError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?;
    if doc["kind"] != "Policy" {
        return Err(err("not an audit.k8s.io Policy".into()));
    }
    let mut rules = Vec::new();
    for (i, r) in doc["rules"].as_array().into_iter().flatten().enumerate() {
        let level = r["level"].as_str().unwrap_or("").to_string();
        match level.as_str() {
            "None" | "Metadata" => {}
            "Request" | "RequestResponse" => {
                return Err(err(format!(
                    "rule {i}: level {level} (request and response bodies) is not supported; use Metadata"
                )));
            }
            other => return Err(err(format!("rule {i}: unknown level {other:?}"))),
        }
        rules.push(Rule {
            level,
            users: crate::meta::strings(&r["users"]),
            user_groups: crate::meta::strings(&r["userGroups"]),
            verbs: crate::meta::strings(&r["verbs"]),
            resources: r["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|g| {
                    (
                        g["group"].as_str().unwrap_or("").to_string(),
                        crate::meta::strings(&g["resources"]),
                        crate::meta::strings(&g["resourceNames"]),
                    )
                })
                .collect(),
            namespaces: crate::meta::strings(&r["namespaces"]),
            non_resource_urls: crate::meta::strings(&r["nonResourceURLs"]),
        });
    }
    Ok(rules)
}

/// Writes audit events.
#[derive(Debug)]
pub struct Auditor {
    file: parking_lot::Mutex<std::fs::File>,
    /// `None`: every request at Metadata.
    rules: Option<Vec<Rule>>,
}

/// What one request did.
#[derive(Debug)]
pub struct Record<'a> {
    pub attrs: &'a Attributes,
    pub uri: &'a str,
    pub source: IpAddr,
    pub user_agent: &'a str,
    pub code: u16,
    pub received: SystemTime,
    /// The authorization decision (`allow`/`forbid`), when one was made.
    pub decision: Option<&'a str>,
    /// A watch or an upgraded connection: logged when its response starts.
    pub streaming: bool,
    /// Who really asked, when the request impersonated `attrs.user`.
    pub caller: Option<&'a UserInfo>,
}

fn micro_time(t: SystemTime) -> String {
    let secs = crate::meta::rfc3339(t);
    let micros = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    format!("{}.{micros:06}Z", secs.trim_end_matches('Z'))
}

impl Auditor {
    pub fn open(path: &Path, policy: Option<&Path>) -> Result<Self, AuditError> {
        let rules = policy.map(parse_policy).transpose()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuditError {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            file: parking_lot::Mutex::new(file),
            rules,
        })
    }

    fn level(&self, attrs: &Attributes) -> &str {
        match &self.rules {
            None => "Metadata",
            Some(rules) => rules
                .iter()
                .find(|r| r.matches(attrs))
                .map_or("None", |r| r.level.as_str()),
        }
    }

    /// Writes the event of a finished request (nothing at level None).
    pub fn log(&self, r: &Record) {
        let level = self.level(r.attrs);
        if level == "None" {
            return;
        }
        // As upstream: `user` is who authenticated, `impersonatedUser` whom they acted as.
        let (user, impersonated) = match r.caller {
            Some(caller) => (caller.to_json(), Some(r.attrs.user.to_json())),
            None => (r.attrs.user.to_json(), None),
        };
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level,
            "auditID": crate::meta::new_uid(),
            "stage": if r.streaming { "ResponseStarted" } else { "ResponseComplete" },
            "requestURI": r.uri,
            "verb": r.attrs.verb,
            "user": user,
            "sourceIPs": [r.source.to_string()],
            "userAgent": r.user_agent,
            "responseStatus": {"metadata": {}, "code": r.code},
            "requestReceivedTimestamp": micro_time(r.received),
            "stageTimestamp": micro_time(SystemTime::now()),
        });
        if let Some(i) = impersonated {
            event["impersonatedUser"] = i;
        }
        if r.attrs.resource_request {
            let mut obj = json!({"resource": r.attrs.resource, "apiVersion": r.attrs.version});
            for (k, v) in [
                ("namespace", &r.attrs.namespace),
                ("name", &r.attrs.name),
                ("subresource", &r.attrs.subresource),
            ] {
                if !v.is_empty() {
                    obj[k] = json!(v);
                }
            }
            if !r.attrs.group.is_empty() {
                obj["apiGroup"] = json!(r.attrs.group);
            }
            event["objectRef"] = obj;
        }
        if let Some(d) = r.decision {
            event["annotations"] =
                json!({"authorization.k8s.io/decision": d, "authorization.k8s.io/reason": ""});
        }
        let mut line = event.to_string();
        line.push('\n');
        if let Err(err) = self.file.lock().write_all(line.as_bytes()) {
            tracing::error!(%err, "writing the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules_pick_the_level() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("policy.yaml");
        std::fs::write(
            &p,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  nonResourceURLs: [/healthz*]\n- level: None\n  resources: [{group: \"\", resources: [events]}]\n- level: Metadata\n",
        )
        .unwrap();
        let a = Auditor::open(&dir.path().join("audit.log"), Some(&p)).unwrap();
        let mut attrs = Attributes {
            verb: "get".into(),
            path: "/healthz/etcd".into(),
            ..Attributes::default()
        };
        assert_eq!(a.level(&attrs), "None");
        attrs.resource_request = true;
        attrs.resource = "events".into();
        assert_eq!(a.level(&attrs), "None");
        attrs.resource = "pods".into();
        assert_eq!(a.level(&attrs), "Metadata");
        std::fs::write(&p, "kind: Policy\nrules:\n- level: RequestResponse\n").unwrap();
        assert!(Auditor::open(&dir.path().join("audit.log"), Some(&p)).is_err());
    }
}
