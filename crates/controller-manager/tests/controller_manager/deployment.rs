//! Deployments driven with kubectl's rollout commands, the test playing the kubelet: a rolling update
//! keeps within maxSurge and maxUnavailable at every step the test observes, `rollout status` succeeds,
//! `rollout undo` brings the old template back as a new revision, `rollout pause` holds a change back,
//! a rollout that never becomes ready exceeds its progress deadline, and Recreate removes every old pod
//! before the first new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use k3rs_tests::{Backend, Cluster};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::fake_kubelet::{self, NEVER_READY};
use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn json_of(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn rollout_status(c: &Cluster, name: &str) -> Result<String> {
    c.kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=90s",
    ])
}

/// Images of the live pods of `app`.
fn images(c: &Cluster, app: &str) -> Result<Vec<String>> {
    let list = json_of(c, &["get", "pods", "-l", &format!("app={app}")])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect())
}

fn deployment(name: &str, replicas: i32, strategy: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "strategy": strategy,
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
}

/// What a pod watcher saw: the worst moments of a rollout.
#[derive(Debug, Default)]
struct Seen {
    pods: HashMap<String, (String, bool)>,
    max_total: usize,
    min_ready: usize,
    events: usize,
    /// Recreate: a pod of `new_image` existed while one of another image did.
    overlap: bool,
}

/// Keeps `pods` (name → image, ready) up to date with one event about `p`.
fn record(pods: &mut HashMap<String, (String, bool)>, p: &Pod, gone: bool) {
    let name = p.metadata.name.clone().unwrap_or_default();
    if gone || p.metadata.deletion_timestamp.is_some() {
        pods.remove(&name);
        return;
    }
    let image = p
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default();
    let ready = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    pods.insert(name, (image, ready));
}

/// Watches the pods of `app` and records the extremes of live and ready pods.
async fn watch_rollout(
    c: &Cluster,
    app: &str,
    new_image: &str,
) -> Result<(Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>)> {
    let client = fake_kubelet::client(&c.kubeconfig()).await?;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let seen = Arc::new(Mutex::new(Seen {
        min_ready: usize::MAX,
        ..Default::default()
    }));
    let s = seen.clone();
    let new_image = new_image.to_string();
    let cfg = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn(async move {
        let mut stream = watcher(pods, cfg).default_backoff().boxed();
        // A relist (the watch restarted) replaces what was seen once it is whole: pods deleted while
        // the watch was down must not linger, and a half-listed state is no step of the rollout.
        let mut relisting: Option<HashMap<String, (String, bool)>> = None;
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            let mut seen = s.lock();
            match ev {
                watcher::Event::Init => {
                    relisting = Some(HashMap::new());
                    continue;
                }
                watcher::Event::InitApply(p) => {
                    if let Some(pods) = relisting.as_mut() {
                        record(pods, &p, false);
                    }
                    continue;
                }
                watcher::Event::InitDone => {
                    seen.pods = relisting.take().unwrap_or_default();
                }
                watcher::Event::Apply(p) => record(&mut seen.pods, &p, false),
                watcher::Event::Delete(p) => record(&mut seen.pods, &p, true),
            }
            let total = seen.pods.len();
            let ready = seen.pods.values().filter(|(_, r)| *r).count();
            let new = seen.pods.values().any(|(i, _)| *i == new_image);
            let old = seen.pods.values().any(|(i, _)| *i != new_image);
            seen.max_total = seen.max_total.max(total);
            seen.min_ready = seen.min_ready.min(ready);
            seen.overlap |= new && old;
            seen.events += 1;
        }
    });
    Ok((seen, task))
}

fn progressing(c: &Cluster, name: &str) -> Result<Value> {
    let d = json_of(c, &["get", "deployment", name])?;
    Ok(d["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"))
        .cloned()
        .unwrap_or_default())
}

async fn rollouts(env: Env) -> Result<()> {
    let c = &env.c;
    let kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
    c.kubectl_in(
        &["apply", "-f", "-"],
        &deployment("web", 10, strategy).to_string(),
    )?;
    let out = rollout_status(c, "web")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    let d = json_of(c, &["get", "deployment", "web"])?;
    ensure!(
        d["status"]["availableReplicas"] == 10 && d["status"]["updatedReplicas"] == 10,
        "{}",
        d["status"]
    );
    ensure!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1",
        "{}",
        d["metadata"]
    );
    let rs = json_of(c, &["get", "rs", "-l", "app=web"])?;
    let first = rs["items"][0].clone();
    let hash = first["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        !hash.is_empty() && first["metadata"]["name"] == format!("web-{hash}"),
        "{}",
        first["metadata"]
    );

    // A new image rolls out within 10 + 3 pods and never fewer than 8 ready.
    let (seen, watch) = watch_rollout(c, "web", "busybox:2").await?;
    eventually("watch primed", WAIT, || Ok(seen.lock().pods.len() == 10)).await?;
    seen.lock().min_ready = usize::MAX;
    c.kubectl(&["set", "image", "deployment/web", "c=busybox:2"])?;
    let out = rollout_status(c, "web")?;
    ensure!(out.contains("successfully rolled out"), "{out}");
    eventually("only new pods", WAIT, || {
        Ok(images(c, "web")? == vec!["busybox:2".to_string(); 10])
    })
    .await?;
    watch.abort();
    {
        let s = seen.lock();
        eprintln!(
            "rolling update observed: {} events, at most {} pods, at least {} ready",
            s.events, s.max_total, s.min_ready
        );
        ensure!(s.events > 10, "too few steps observed: {s:?}");
        ensure!(
            s.max_total <= 13,
            "more than replicas + maxSurge pods: {s:?}"
        );
        ensure!(
            s.min_ready >= 8,
            "fewer than replicas - maxUnavailable ready: {s:?}"
        );
    }
    let d = json_of(c, &["get", "deployment", "web"])?;
    ensure!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2",
        "{}",
        d["metadata"]
    );
    let cond = progressing(c, "web")?;
    ensure!(
        cond["reason"] == "NewReplicaSetAvailable" && cond["status"] == "True",
        "{cond}"
    );

    // Undo: the first template again, as revision 3 of the first ReplicaSet.
    c.kubectl(&["rollout", "undo", "deployment/web"])?;
    rollout_status(c, "web")?;
    eventually("old image back", WAIT, || {
        Ok(images(c, "web")? == vec!["busybox:1".to_string(); 10])
    })
    .await?;
    let back = json_of(c, &["get", "rs", &format!("web-{hash}")])?;
    ensure!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3",
        "{}",
        back["metadata"]
    );
    ensure!(
        back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1",
        "{}",
        back["metadata"]
    );
    let history = c.kubectl(&["rollout", "history", "deployment/web"])?;
    ensure!(history.contains('2') && history.contains('3'), "{history}");

    // Paused: a template change waits.
    c.kubectl(&["rollout", "pause", "deployment/web"])?;
    c.kubectl(&["set", "image", "deployment/web", "c=busybox:3"])?;
    eventually("paused condition", WAIT, || {
        Ok(progressing(c, "web")?["reason"] == "DeploymentPaused")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        images(c, "web")? == vec!["busybox:1".to_string(); 10],
        "a paused deployment rolled"
    );
    let sets = json_of(c, &["get", "rs", "-l", "app=web"])?;
    ensure!(
        sets["items"].as_array().map_or(0, Vec::len) == 2,
        "a paused deployment made a replica set"
    );
    c.kubectl(&["rollout", "resume", "deployment/web"])?;
    rollout_status(c, "web")?;
    eventually("resumed rollout", WAIT, || {
        Ok(images(c, "web")? == vec!["busybox:3".to_string(); 10])
    })
    .await?;

    // Scaling an idle deployment.
    c.kubectl(&["scale", "deployment/web", "--replicas=4"])?;
    eventually("scaled to 4", WAIT, || Ok(images(c, "web")?.len() == 4)).await?;

    // Never ready: the progress deadline passes.
    c.kubectl(&[
        "patch",
        "deployment/web",
        "--type=merge",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":3}}"#,
    ])?;
    c.kubectl(&[
        "set",
        "image",
        "deployment/web",
        &format!("c={NEVER_READY}"),
    ])?;
    let err = c
        .kubectl_err(
            &["rollout", "status", "deployment/web", "--timeout=60s"],
            None,
        )
        .context("rollout status of a stuck deployment")?;
    ensure!(err.contains("exceeded its progress deadline"), "{err}");
    let cond = progressing(c, "web")?;
    ensure!(
        cond["status"] == "False" && cond["reason"] == "ProgressDeadlineExceeded",
        "{cond}"
    );
    ensure!(
        cond["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("has timed out progressing.")),
        "{cond}"
    );

    // Recreate: every old pod is gone before a new one appears.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &deployment("batch", 3, json!({"type": "Recreate"})).to_string(),
    )?;
    rollout_status(c, "batch")?;
    let (seen, watch) = watch_rollout(c, "batch", "busybox:2").await?;
    eventually("watch primed", WAIT, || Ok(seen.lock().pods.len() == 3)).await?;
    c.kubectl(&["set", "image", "deployment/batch", "c=busybox:2"])?;
    rollout_status(c, "batch")?;
    eventually("recreated", WAIT, || {
        Ok(images(c, "batch")? == vec!["busybox:2".to_string(); 3])
    })
    .await?;
    watch.abort();
    if seen.lock().overlap {
        bail!("Recreate ran old and new pods together: {:?}", seen.lock());
    }

    // Events name the scaling.
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
        "-o",
        "json",
    ])?;
    ensure!(
        events.contains("ScalingReplicaSet") && events.contains("Scaled up replica set web-"),
        "{events}"
    );
    kubelet.abort();
    Ok(())
}

#[test]
fn deployment_rollouts() {
    crate::run(Backend::Sqlite, rollouts);
}
