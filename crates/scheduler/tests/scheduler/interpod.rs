//! InterPodAffinity: required affinity lands in the target pod's topology domain (a zone); with no
//! matching pod anywhere a pod is refused unless it matches its own term (the first pod of a group);
//! required anti-affinity keeps a pod out of the domain; an existing pod's anti-affinity repels a newcomer;
//! a term's namespaceSelector looks at the pods of the namespaces it selects (and without one, at the
//! pod's own namespace only).

use anyhow::{Result, ensure};
use serde_json::json;

use crate::{Env, HOSTNAME, ZONE, node, pod, same_preemption, term};

fn zone_of(node: &str) -> &'static str {
    if node.starts_with('a') { "a" } else { "b" }
}

async fn affinity(mut env: Env) -> Result<()> {
    env.create_nodes(&[
        node("a1", "4", "8Gi").zone("a"),
        node("a2", "4", "8Gi").zone("a"),
        node("b1", "4", "8Gi").zone("b"),
        node("b2", "4", "8Gi").zone("b"),
    ])
    .await?;
    for (ns, team) in [("team-a", "a"), ("team-b", "b")] {
        env.create(&json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"team": team}}}))?;
    }
    env.start(&[]).await?;
    let with = |kind: &str, t: serde_json::Value| json!({kind: {"requiredDuringSchedulingIgnoredDuringExecution": [t]}});

    env.create_pod(&pod("db").label("app", "db").select(HOSTNAME, "b1"))
        .await?;
    env.expect_bound("db", "b1").await?;
    env.create_pod(&pod("web").spec("affinity", with("podAffinity", term("app", "db", ZONE))))
        .await?;
    let on = env.wait_bound("web").await?;
    ensure!(zone_of(&on) == "b", "web went to {on}, outside db's zone");

    // Nothing matches and the pod does not match its own term.
    env.create_pod(&pod("lonely").spec(
        "affinity",
        with("podAffinity", term("app", "nothing", ZONE)),
    ))
    .await?;
    let pre = env
        .unschedulable(
            "lonely",
            "0/4 nodes are available: 4 node(s) didn't match pod affinity rules.",
        )
        .await?;
    same_preemption(
        &pre,
        "0/4 nodes are available: 4 Preemption is not helpful for scheduling.",
    )?;
    // The first pod of a group that wants to be with its group is let through.
    env.create_pod(
        &pod("first-cache")
            .label("app", "cache")
            .spec("affinity", with("podAffinity", term("app", "cache", ZONE))),
    )
    .await?;
    env.wait_bound("first-cache").await?;

    // Anti-affinity: out of db's zone; over a key all nodes share, nowhere.
    env.create_pod(
        &pod("not-with-db").spec("affinity", with("podAntiAffinity", term("app", "db", ZONE))),
    )
    .await?;
    let on = env.wait_bound("not-with-db").await?;
    ensure!(
        zone_of(&on) == "a",
        "not-with-db went to {on}, in db's zone"
    );
    env.create_pod(&pod("hater").spec(
        "affinity",
        with("podAntiAffinity", term("app", "db", "kubernetes.io/os")),
    ))
    .await?;
    env.unschedulable(
        "hater",
        "0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules.",
    )
    .await?;

    // An existing pod's anti-affinity keeps the intruder out of zone a; its nodeSelector out of zone b.
    env.create_pod(&pod("loner").select(HOSTNAME, "a1").spec(
        "affinity",
        with("podAntiAffinity", term("app", "intruder", ZONE)),
    ))
    .await?;
    env.expect_bound("loner", "a1").await?;
    env.create_pod(&pod("intruder").label("app", "intruder").select(ZONE, "a"))
        .await?;
    env.unschedulable(
        "intruder",
        "0/4 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 2 node(s) didn't satisfy existing pods anti-affinity rules.",
    )
    .await?;

    // namespaceSelector: pods labelled app=svc live in team-a (on a2) and team-b (on b2).
    for (ns, on) in [("team-a", "a2"), ("team-b", "b2")] {
        env.create_pod(&pod("svc").ns(ns).label("app", "svc").select(HOSTNAME, on))
            .await?;
        let got = env.wait_bound_in(ns, "svc").await?;
        ensure!(got == on, "{ns}/svc went to {got}, not {on}");
    }
    for (name, team, on) in [("follow-a", "a", "a2"), ("follow-b", "b", "b2")] {
        let mut t = term("app", "svc", HOSTNAME);
        t["namespaceSelector"] = json!({"matchLabels": {"team": team}});
        env.create_pod(&pod(name).spec("affinity", with("podAffinity", t)))
            .await?;
        env.expect_bound(name, on).await?;
    }
    // Without a namespaceSelector only the pod's own namespace (default, no app=svc there) counts.
    env.create_pod(&pod("follow-own").spec(
        "affinity",
        with("podAffinity", term("app", "svc", HOSTNAME)),
    ))
    .await?;
    env.unschedulable(
        "follow-own",
        "0/4 nodes are available: 4 node(s) didn't match pod affinity rules.",
    )
    .await?;
    Ok(())
}

#[test]
fn inter_pod_affinity() {
    crate::run(affinity);
}
