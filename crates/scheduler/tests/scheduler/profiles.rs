//! The configuration file (KubeSchedulerConfiguration, kubescheduler.config.k8s.io/v1): a profile's
//! pluginConfig (NodeResourcesFit with MostAllocated packs pods onto the most requested node), a second
//! profile with PodTopologySpread disabled placing what the default profile refuses, pods naming a
//! schedulerName no profile has left alone (Pending, no condition, no event) until a profile with that
//! name appears; and a configuration naming an unknown plugin stops the binary with an error naming it.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::target_bin;
use serde_json::json;

use crate::{Env, node, node_of, pod, scheduled_condition};

const CONFIG: &str = r#"apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - name: cpu
          weight: 1
        - name: memory
          weight: 1
- schedulerName: no-spread
  plugins:
    multiPoint:
      disabled:
      - name: PodTopologySpread
"#;

const ELSEWHERE: &str = r#"- schedulerName: elsewhere
"#;

const UNKNOWN_PLUGIN: &str = r#"apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
profiles:
- schedulerName: default-scheduler
  plugins:
    score:
      enabled:
      - name: NoSuchPlugin
        weight: 1
"#;

async fn profiles(mut env: Env) -> Result<()> {
    env.create_nodes(&[node("m1", "4", "8Gi"), node("m2", "4", "8Gi")])
        .await?;
    // Balanced load (a quarter of cpu and memory) on m1.
    env.create_pod(&pod("load").on("m1").requests("1", "2Gi"))
        .await?;
    let config = env.write_file("config.yaml", CONFIG)?;
    env.start(&["--config", config.as_str()]).await?;

    env.create_pod(&pod("other").scheduler("elsewhere")).await?;

    // MostAllocated: m1 (over a quarter used) beats the empty m2 every time.
    for i in 1..=3 {
        let name = format!("pack-{i}");
        env.create_pod(&pod(&name).requests("100m", "128Mi"))
            .await?;
        let on = env.wait_bound(&name).await?;
        ensure!(
            on == "m1",
            "{name} went to {on}; MostAllocated packs onto m1"
        );
    }

    // A constraint on a key no node has: the default profile refuses, no-spread places.
    let spread = json!([{"maxSkew": 1, "topologyKey": "example.com/rack",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "racked"}}}]);
    env.create_pod(
        &pod("spread-default")
            .label("app", "racked")
            .spec("topologySpreadConstraints", spread.clone()),
    )
    .await?;
    env.unschedulable(
        "spread-default",
        "0/2 nodes are available: 2 node(s) didn't match pod topology spread constraints (missing required label).",
    )
    .await?;
    env.create_pod(
        &pod("spread-off")
            .label("app", "racked")
            .scheduler("no-spread")
            .spec("topologySpreadConstraints", spread),
    )
    .await?;
    env.wait_bound("spread-off").await?;

    // Nobody schedules for `elsewhere`: the pod is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other = env.pod("default", "other").await?;
    ensure!(
        node_of(&other).is_none() && scheduled_condition(&other).is_none(),
        "a pod for another scheduler was handled: {:?}",
        other.status
    );
    let events = env.events_for("default", "other").await?;
    ensure!(
        events.is_empty(),
        "events about a pod for another scheduler: {events:?}"
    );

    // A profile of that name: the pod is placed.
    let config = env.write_file("config-2.yaml", &format!("{CONFIG}{ELSEWHERE}"))?;
    env.start(&["--config", config.as_str()]).await?;
    env.wait_bound("other").await?;
    Ok(())
}

#[test]
fn profiles_and_plugin_config() {
    crate::run(profiles);
}

async fn unknown_plugin(env: Env) -> Result<()> {
    let config = env.write_file("bad.yaml", UNKNOWN_PLUGIN)?;
    let child = tokio::process::Command::new(target_bin("k3rs-scheduler"))
        .arg("--kubeconfig")
        .arg(env.c.kubeconfig())
        .arg("--config")
        .arg(&config)
        .arg("--healthz-bind-address")
        .arg(format!("127.0.0.1:{}", k3rs_tests::free_port()))
        .arg("--leader-elect=false")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting k3rs-scheduler")?;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("k3rs-scheduler kept running with a configuration naming an unknown plugin")??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !out.status.success(),
        "k3rs-scheduler exited successfully with an unknown plugin:\n{text}"
    );
    ensure!(
        text.contains("NoSuchPlugin"),
        "the error does not name the unknown plugin:\n{text}"
    );
    Ok(())
}

#[test]
fn unknown_plugin_is_refused() {
    crate::run(unknown_plugin);
}
