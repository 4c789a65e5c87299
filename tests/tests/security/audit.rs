//! The audit log: `audit.k8s.io/v1` Events as JSON lines for allowed, forbidden and unauthenticated
//! requests, with user, verb, object reference, status and the authorization decision.

use anyhow::{Result, ensure};
use k3rs_tests::Cluster;
use serde_json::Value;

async fn audit(c: Cluster) -> Result<()> {
    c.kubectl(&["get", "configmaps", "-n", "kube-system"])?;
    let out = c.run_with_token("alice-token", &["get", "secret", "x", "-n", "default"])?;
    ensure!(!out.ok);
    let (code, _) = c.raw_get("/api/v1/namespaces", Some("bogus"))?;
    ensure!(code == 401);
    let log = std::fs::read_to_string(c.data_dir().join("audit.log"))?;
    let events: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(events.iter().all(|e| e["kind"] == "Event"
        && e["apiVersion"] == "audit.k8s.io/v1"
        && e["level"] == "Metadata"
        && e["auditID"].is_string()));
    let list = events.iter().find(|e| {
        e["verb"] == "list"
            && e["objectRef"]["resource"] == "configmaps"
            && e["user"]["username"] == "system:admin"
    });
    let list = list.ok_or_else(|| anyhow::anyhow!("no event for the admin's list:\n{log}"))?;
    ensure!(
        list["objectRef"]["namespace"] == "kube-system"
            && list["responseStatus"]["code"] == 200
            && list["stage"] == "ResponseComplete"
            && list["sourceIPs"][0] == "127.0.0.1"
            && list["annotations"]["authorization.k8s.io/decision"] == "allow"
            && list["userAgent"]
                .as_str()
                .is_some_and(|u| u.starts_with("kubectl")),
        "{list}"
    );
    ensure!(
        events.iter().any(|e| e["user"]["username"] == "alice"
            && e["verb"] == "get"
            && e["objectRef"]["name"] == "x"
            && e["responseStatus"]["code"] == 403
            && e["annotations"]["authorization.k8s.io/decision"] == "forbid"),
        "no forbidden event:\n{log}"
    );
    ensure!(
        events
            .iter()
            .any(|e| e["requestURI"] == "/api/v1/namespaces" && e["responseStatus"]["code"] == 401),
        "no unauthenticated event:\n{log}"
    );
    Ok(())
}

#[test]
fn audit_log_records_requests_as_upstream() {
    crate::run_with(&["--audit-log-path={dir}/audit.log"], audit);
}
