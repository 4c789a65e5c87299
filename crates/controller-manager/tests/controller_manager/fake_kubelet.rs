//! The test's stand-in for kubelets: every pod that appears gets an address (a 10.244.x.y string: no
//! traffic is ever sent) and is marked Running and Ready (unless its first container's image is
//! `never-ready`), once; later status writes by the test are left alone. An image `exit:<code>` makes
//! the pod's container end at once with that code (Succeeded for 0, else Failed).

use std::path::Path;

use anyhow::Result;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

pub const NEVER_READY: &str = "never-ready";

pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Whether a Ready condition was ever written.
fn started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready"))
}

/// Runs until dropped (abort the handle).
pub async fn spawn(kubeconfig: &Path) -> Result<tokio::task::JoinHandle<()>> {
    let client = client(kubeconfig).await?;
    Ok(tokio::spawn(async move {
        let mut next_ip: u32 = 0;
        let all: Api<Pod> = Api::all(client.clone());
        let mut stream = watcher(all, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(pod) = ev else { continue };
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            if started(&pod) || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            next_ip += 1;
            let ip = format!("10.244.{}.{}", next_ip / 250, next_ip % 250 + 1);
            let ready = if image == NEVER_READY {
                "False"
            } else {
                "True"
            };
            let (Some(ns), Some(name)) =
                (pod.metadata.namespace.clone(), pod.metadata.name.clone())
            else {
                continue;
            };
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let status = match image
                .strip_prefix("exit:")
                .and_then(|c| c.parse::<i32>().ok())
            {
                Some(code) => json!({"status": {
                    "phase": if code == 0 { "Succeeded" } else { "Failed" },
                    "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": now}],
                    "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": false,
                        "restartCount": 0, "state": {"terminated": {"exitCode": code, "finishedAt": now,
                        "reason": if code == 0 { "Completed" } else { "Error" }}}}]}}),
                None => json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [
                    {"type": "Ready", "status": ready, "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": ready, "lastTransitionTime": now}]}}),
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }
    }))
}
