//! The ClusterRole aggregation controller (upstream's `clusterrole-aggregation`): a ClusterRole with an
//! `aggregationRule` gets as its rules the union of the rules of every other ClusterRole its selectors match,
//! in name order without duplicates, written whenever they differ.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::selector::matches;
use futures_util::StreamExt;
use k3rs_common::Readiness;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

const MANAGER: &str = "clusterrole-aggregation-controller";

/// The rules an aggregated role should have, from every role (`roles` sorted by name).
pub fn aggregated_rules(role: &ClusterRole, roles: &[ClusterRole]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .clone()
        .unwrap_or_default();
    let name = role.metadata.name.as_deref().unwrap_or("");
    let mut rules: Vec<PolicyRule> = Vec::new();
    // Selector by selector, each one's roles in name order (`roles` is sorted), as upstream; an empty
    // selector matches every role, as a label selector does.
    for s in &selectors {
        for other in roles {
            if other.metadata.name.as_deref() == Some(name) {
                continue;
            }
            let labels = other.metadata.labels.clone().unwrap_or_default();
            if !matches(s, &labels) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
    }
    Some(rules)
}

/// Writes every aggregated role whose rules are not what its selectors give; false when a write failed
/// (the caller retries).
async fn sync(api: &Api<ClusterRole>, roles: &BTreeMap<String, ClusterRole>) -> bool {
    let mut ok = true;
    let all: Vec<ClusterRole> = roles.values().cloned().collect();
    for role in &all {
        let Some(want) = aggregated_rules(role, &all) else {
            continue;
        };
        if role.rules.clone().unwrap_or_default() == want {
            continue;
        }
        let name = role.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": want,
        });
        let params = PatchParams::apply(MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => tracing::info!(role = %name, rules = want.len(), "aggregated cluster role"),
            Err(err) => {
                tracing::warn!(role = %name, %err, "aggregating cluster role failed");
                ok = false;
            }
        }
    }
    ok
}

/// Runs until `shutdown`; `ready` is set after the first full list has been aggregated.
pub async fn run(client: kube::Client, shutdown: CancellationToken, ready: Readiness) {
    let api: Api<ClusterRole> = Api::all(client);
    while !shutdown.is_cancelled() {
        let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
        let mut roles: BTreeMap<String, ClusterRole> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, ClusterRole>> = None;
        // After a failed write the roles are synced again with backoff, even without new events.
        let mut retry: Option<Duration> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
                _ = tokio::time::sleep(retry.unwrap_or(Duration::from_secs(3600))), if retry.is_some() => {
                    retry = if sync(&api, &roles).await {
                        None
                    } else {
                        retry.map(|d| (d * 2).min(Duration::from_secs(300)))
                    };
                    continue;
                }
            };
            let failed_backoff = |ok: bool, r: Option<Duration>| {
                if ok {
                    None
                } else {
                    Some(r.unwrap_or(Duration::from_secs(1)))
                }
            };
            let key = |r: &ClusterRole| r.metadata.name.clone().unwrap_or_default();
            match ev {
                Some(Ok(watcher::Event::Init)) => listing = Some(BTreeMap::new()),
                Some(Ok(watcher::Event::InitApply(r))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(key(&r), r);
                    }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    roles = listing.take().unwrap_or_default();
                    retry = failed_backoff(sync(&api, &roles).await, retry);
                    ready.set(true);
                }
                Some(Ok(watcher::Event::Apply(r))) => {
                    roles.insert(key(&r), r);
                    retry = failed_backoff(sync(&api, &roles).await, retry);
                }
                Some(Ok(watcher::Event::Delete(r))) => {
                    roles.remove(&key(&r));
                    retry = failed_backoff(sync(&api, &roles).await, retry);
                }
                Some(Err(err)) => {
                    tracing::debug!(%err, "cluster role watch failed, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::AggregationRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    fn role(name: &str, labels: &[(&str, &str)], verbs: &[&str]) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            rules: Some(vec![PolicyRule {
                verbs: verbs.iter().map(|s| s.to_string()).collect(),
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                ..Default::default()
            }]),
            aggregation_rule: None,
        }
    }

    #[test]
    fn union_of_selected_roles_in_name_order() {
        let mut edit = role("edit", &[], &[]);
        edit.rules = None;
        edit.aggregation_rule = Some(AggregationRule {
            cluster_role_selectors: Some(vec![LabelSelector {
                match_labels: Some([("agg".to_string(), "edit".to_string())].into()),
                ..Default::default()
            }]),
        });
        let roles = vec![
            role("a", &[("agg", "edit")], &["get"]),
            role("b", &[("agg", "view")], &["list"]),
            role("c", &[("agg", "edit")], &["get"]),
            role("d", &[("agg", "edit")], &["delete"]),
            edit.clone(),
        ];
        let rules = aggregated_rules(&edit, &roles).unwrap();
        let verbs: Vec<&str> = rules.iter().map(|r| r.verbs[0].as_str()).collect();
        assert_eq!(verbs, vec!["get", "delete"]);
        assert!(aggregated_rules(&roles[0], &roles).is_none());
    }
}
