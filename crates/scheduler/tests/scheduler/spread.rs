//! PodTopologySpread: with `DoNotSchedule` and maxSkew 1 over two zones pods alternate zones and never
//! land on a node lacking the zone label; with minDomains 3 and only two zones the third pod is refused
//! (a node without the key: `(missing required label)`); and the system default constraints spread the
//! pods of one ReplicaSet over hostnames (ScheduleAnyway) where LeastAllocated alone would stack them.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{Env, PAUSE, ZONE, node, pod};

fn constraint(app: &str, min_domains: Option<i32>) -> Value {
    let mut c = json!({"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": app}}});
    if let Some(m) = min_domains {
        c["minDomains"] = json!(m);
    }
    c
}

fn zone_of(node: &str) -> &'static str {
    match node {
        "sa-1" | "sa-2" => "a",
        "sb-1" => "b",
        _ => "none",
    }
}

async fn zones(mut env: Env) -> Result<()> {
    env.create_nodes(&[
        node("sa-1", "4", "8Gi").zone("a"),
        node("sa-2", "4", "8Gi").zone("a"),
        node("sb-1", "4", "8Gi").zone("b"),
        node("s-nozone", "4", "8Gi"),
    ])
    .await?;
    env.start(&[]).await?;

    // One at a time: after each, the zones differ by at most one pod.
    let (mut a, mut b) = (0i32, 0i32);
    for i in 1..=4 {
        let name = format!("web-{i}");
        env.create_pod(&pod(&name).label("app", "web").spec(
            "topologySpreadConstraints",
            json!([constraint("web", None)]),
        ))
        .await?;
        let on = env.wait_bound(&name).await?;
        match zone_of(&on) {
            "a" => a += 1,
            "b" => b += 1,
            _ => anyhow::bail!("{name} landed on {on}, which has no zone"),
        }
        ensure!(
            (a - b).abs() <= 1,
            "after {name} (on {on}) zone a has {a} pods, zone b {b}"
        );
    }

    // minDomains 3 with two zones: the global minimum counts as 0, so each zone takes one pod only.
    let md = |name: &str| {
        pod(name).label("app", "md").spec(
            "topologySpreadConstraints",
            json!([constraint("md", Some(3))]),
        )
    };
    env.create_pod(&md("md-1")).await?;
    let first = zone_of(&env.wait_bound("md-1").await?);
    env.create_pod(&md("md-2")).await?;
    let second = zone_of(&env.wait_bound("md-2").await?);
    ensure!(
        first != second && first != "none" && second != "none",
        "md-1 went to zone {first}, md-2 to zone {second}"
    );
    env.create_pod(&md("md-3")).await?;
    env.unschedulable(
        "md-3",
        "0/4 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label), 3 node(s) didn't match pod topology spread constraints.",
    )
    .await?;
    Ok(())
}

#[test]
fn topology_spread_constraints() {
    crate::run(zones);
}

/// big has 16 times small's room: LeastAllocated alone scores big 99 and small 97 for a pod without
/// requests (the default 100m/200Mi), so plain pods all go to big. For the ReplicaSet's pods the default
/// hostname constraint (maxSkew 3, weight 2) outweighs that as soon as big holds one more of them than
/// small: they alternate.
async fn defaults(mut env: Env) -> Result<()> {
    env.create_nodes(&[node("big", "64", "128Gi"), node("small", "4", "8Gi")])
        .await?;
    // No controller-manager runs: the ReplicaSet makes no pods, the test makes them in its name.
    let rs = env.create(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "rs", "namespace": "default"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "rs"}},
            "template": {"metadata": {"labels": {"app": "rs"}},
                "spec": {"containers": [{"name": "c", "image": PAUSE}]}}}}))?;
    let uid = rs["metadata"]["uid"]
        .as_str()
        .context("the ReplicaSet has no uid")?
        .to_string();
    env.start(&[]).await?;

    for i in 1..=4 {
        let name = format!("plain-{i}");
        env.create_pod(&pod(&name).label("app", "plain")).await?;
        let on = env.wait_bound(&name).await?;
        ensure!(
            on == "big",
            "{name} (no owner, no spreading) went to {on}, not the emptier big"
        );
    }
    let (mut on_big, mut on_small) = (0i32, 0i32);
    for i in 1..=4 {
        let name = format!("rs-{i}");
        let owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
            "uid": uid, "controller": true}]);
        let mut p = pod(&name).label("app", "rs");
        p.v["metadata"]["ownerReferences"] = owner;
        env.create_pod(&p).await?;
        match env.wait_bound(&name).await?.as_str() {
            "big" => on_big += 1,
            _ => on_small += 1,
        }
        ensure!(
            (on_big - on_small).abs() <= 1,
            "after {name}: {on_big} of the ReplicaSet's pods on big, {on_small} on small"
        );
    }
    Ok(())
}

#[test]
fn system_default_spreading() {
    crate::run(defaults);
}
