//! The kubelet's view of the CRI runtime: which sandboxes and containers belong to which pod (upstream's
//! `io.kubernetes.*` labels and annotations), and the calls a pod worker makes, each error naming its call.

use std::collections::HashMap;

use crate::cri::{Cri, Error, api};

pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
pub const RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";
pub const TERMINATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
/// Which kind of container: `init`, `sidecar` or `regular` (k3rs's own label).
pub const CONTAINER_KIND: &str = "k3rs.io/container-kind";

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> Error {
    move |status| Error::Call { call: name, status }
}

/// A pod's sandbox as CRI lists it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: i64,
}

/// A container as CRI lists it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: api::ContainerState,
    pub created_at: i64,
    pub hash: String,
    pub restart_count: i32,
}

/// All of one pod's sandboxes and containers, newest first.
#[derive(Debug, Clone, Default)]
pub struct PodRuntime {
    pub sandboxes: Vec<Sandbox>,
    pub containers: Vec<Container>,
}

impl PodRuntime {
    /// The newest ready sandbox.
    pub fn ready_sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes.first().filter(|s| s.ready)
    }

    /// The newest container named `name` (in any sandbox).
    pub fn latest(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether anything runs: a ready sandbox or a container not exited.
    pub fn running(&self) -> bool {
        self.sandboxes.iter().any(|s| s.ready)
            || self
                .containers
                .iter()
                .any(|c| c.state == api::ContainerState::ContainerRunning)
    }
}

/// A pod's key in listings: its UID.
pub type PodUid = String;

/// Every k3rs-managed pod's sandboxes and containers, by pod UID (one `ListPodSandbox` and one
/// `ListContainers`): what the pod lifecycle event generator compares from one relist to the next.
pub async fn list_all(cri: &mut Cri) -> Result<HashMap<PodUid, PodRuntime>, Error> {
    list(cri, HashMap::new()).await
}

/// One pod's sandboxes and containers.
pub async fn list_pod(cri: &mut Cri, uid: &str) -> Result<PodRuntime, Error> {
    let selector = HashMap::from([(POD_UID.to_string(), uid.to_string())]);
    Ok(list(cri, selector).await?.remove(uid).unwrap_or_default())
}

async fn list(
    cri: &mut Cri,
    selector: HashMap<String, String>,
) -> Result<HashMap<PodUid, PodRuntime>, Error> {
    let sandboxes = cri
        .runtime
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                label_selector: selector.clone(),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListPodSandbox"))?
        .into_inner()
        .items;
    let containers = cri
        .runtime
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                label_selector: selector,
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListContainers"))?
        .into_inner()
        .containers;
    let mut out: HashMap<PodUid, PodRuntime> = HashMap::new();
    for s in sandboxes {
        let Some(uid) = s.labels.get(POD_UID) else {
            continue;
        };
        out.entry(uid.clone()).or_default().sandboxes.push(Sandbox {
            ready: s.state == api::PodSandboxState::SandboxReady as i32,
            attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
            created_at: s.created_at,
            id: s.id,
        });
    }
    for c in containers {
        let Some(uid) = c.labels.get(POD_UID) else {
            continue;
        };
        let name = c
            .labels
            .get(CONTAINER_NAME)
            .cloned()
            .or_else(|| c.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default();
        out.entry(uid.clone())
            .or_default()
            .containers
            .push(Container {
                attempt: c.metadata.as_ref().map_or(0, |m| m.attempt),
                state: api::ContainerState::try_from(c.state)
                    .unwrap_or(api::ContainerState::ContainerUnknown),
                created_at: c.created_at,
                hash: c
                    .annotations
                    .get(CONTAINER_HASH)
                    .cloned()
                    .unwrap_or_default(),
                restart_count: c
                    .annotations
                    .get(RESTART_COUNT)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                name,
                sandbox_id: c.pod_sandbox_id,
                id: c.id,
            });
    }
    for p in out.values_mut() {
        p.sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
        p.containers
            .sort_by_key(|c| std::cmp::Reverse(c.created_at));
    }
    Ok(out)
}

pub async fn sandbox_status(cri: &mut Cri, id: &str) -> Result<api::PodSandboxStatus, Error> {
    cri.runtime
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .map_err(call("PodSandboxStatus"))?
        .into_inner()
        .status
        .ok_or_else(|| Error::Call {
            call: "PodSandboxStatus",
            status: tonic::Status::not_found(format!("no status for sandbox {id}")),
        })
}

pub async fn container_status(cri: &mut Cri, id: &str) -> Result<api::ContainerStatus, Error> {
    cri.runtime
        .container_status(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .map_err(call("ContainerStatus"))?
        .into_inner()
        .status
        .ok_or_else(|| Error::Call {
            call: "ContainerStatus",
            status: tonic::Status::not_found(format!("no status for container {id}")),
        })
}

pub async fn run_sandbox(cri: &mut Cri, config: api::PodSandboxConfig) -> Result<String, Error> {
    Ok(cri
        .runtime
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map_err(call("RunPodSandbox"))?
        .into_inner()
        .pod_sandbox_id)
}

pub async fn stop_sandbox(cri: &mut Cri, id: &str) -> Result<(), Error> {
    cri.runtime
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(call("StopPodSandbox"))?;
    Ok(())
}

pub async fn remove_sandbox(cri: &mut Cri, id: &str) -> Result<(), Error> {
    cri.runtime
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .map_err(call("RemovePodSandbox"))?;
    Ok(())
}

pub async fn create_container(
    cri: &mut Cri,
    sandbox_id: &str,
    config: api::ContainerConfig,
    sandbox_config: api::PodSandboxConfig,
) -> Result<String, Error> {
    Ok(cri
        .runtime
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await
        .map_err(call("CreateContainer"))?
        .into_inner()
        .container_id)
}

pub async fn start_container(cri: &mut Cri, id: &str) -> Result<(), Error> {
    cri.runtime
        .start_container(api::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .map_err(call("StartContainer"))?;
    Ok(())
}

/// Stops a container: SIGTERM (or the image's stop signal), SIGKILL after `timeout_s` seconds.
pub async fn stop_container(cri: &mut Cri, id: &str, timeout_s: i64) -> Result<(), Error> {
    cri.runtime
        .stop_container(api::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_s,
        })
        .await
        .map_err(call("StopContainer"))?;
    Ok(())
}

pub async fn remove_container(cri: &mut Cri, id: &str) -> Result<(), Error> {
    cri.runtime
        .remove_container(api::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .map_err(call("RemoveContainer"))?;
    Ok(())
}

/// Runs `cmd` in a container and waits up to `timeout_s` (0: no limit).
pub async fn exec_sync(
    cri: &mut Cri,
    id: &str,
    cmd: Vec<String>,
    timeout_s: i64,
) -> Result<api::ExecSyncResponse, Error> {
    Ok(cri
        .runtime
        .exec_sync(api::ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: timeout_s,
        })
        .await
        .map_err(call("ExecSync"))?
        .into_inner())
}

/// The runtime's readiness conditions (`RuntimeReady`, `NetworkReady`) with their messages.
pub async fn status(cri: &mut Cri) -> Result<Vec<api::RuntimeCondition>, Error> {
    Ok(cri
        .runtime
        .status(api::StatusRequest { verbose: false })
        .await
        .map_err(call("Status"))?
        .into_inner()
        .status
        .map(|s| s.conditions)
        .unwrap_or_default())
}

pub async fn list_images(cri: &mut Cri) -> Result<Vec<api::Image>, Error> {
    Ok(cri
        .images
        .list_images(api::ListImagesRequest { filter: None })
        .await
        .map_err(call("ListImages"))?
        .into_inner()
        .images)
}

/// Pulls `image` (with registry credentials when given) and returns its reference.
pub async fn pull_image(
    cri: &mut Cri,
    image: &str,
    auth: Option<api::AuthConfig>,
) -> Result<String, Error> {
    Ok(cri
        .images
        .pull_image(api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .map_err(call("PullImage"))?
        .into_inner()
        .image_ref)
}
