//! The local-path provisioner K3s ships (`rancher.io/local-path`), here a controller: it keeps the
//! default StorageClass `local-path` (WaitForFirstConsumer, reclaim Delete), and for every claim the
//! binder hands it, once the scheduler chose a node, makes the directory
//! `<storage-dir>/pvc-<uid>_<namespace>_<claim>` on that node with a helper pod (as upstream's
//! provisioner does: `mkdir -m 0777 -p`) and then a hostPath PersistentVolume pinned to the node and
//! pre-bound to the claim. A Released volume it made is removed the same way (`rm -rf` in a helper pod,
//! then the volume object).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Error as KubeError, ResourceExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    ANN_DEFAULT_CLASS, ANN_PROVISIONED_BY, capacity, claim_class, claim_provisioner, requested,
    selected_node, volume_phase,
};
use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Informer, key_of, split_key};
use crate::pod::{NewPod, Pod};
use crate::queue::{Outcome, Queue, run_workers};

/// The provisioner's name, as K3s's.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The StorageClass it keeps.
pub const CLASS: &str = "local-path";
/// The node a volume lives on (also in its node affinity).
const ANN_NODE: &str = "local.path.provisioner/selected-node";
/// Labels of the helper pods.
const HELPER_LABEL: &str = "k3rs.io/local-path-volume";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// `--local-path-*` settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where volumes' directories are made on every node (`<data-dir>/storage`).
    pub storage_dir: PathBuf,
    /// The image of the helper pods (it needs `/bin/sh`, `mkdir` and `rm`).
    pub helper_image: String,
    /// The namespace of the helper pods.
    pub namespace: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            storage_dir: PathBuf::from("/var/lib/k3rs/storage"),
            helper_image: "docker.io/rancher/mirrored-library-busybox:1.36.1".into(),
            namespace: "kube-system".into(),
        }
    }
}

struct Provisioner {
    client: kube::Client,
    settings: Settings,
    claims: Informer<PersistentVolumeClaim>,
    volumes: Informer<PersistentVolume>,
    classes: Informer<StorageClass>,
    pods: Informer<Pod>,
    events: Recorder,
}

/// Work keys: `claim:<ns>/<name>` to provision, `volume:<name>` to delete.
pub fn start(ctx: &Ctx, settings: Settings, shutdown: &CancellationToken) -> JoinSet<()> {
    let claims: Informer<PersistentVolumeClaim> = ctx.informers.get();
    let volumes: Informer<PersistentVolume> = ctx.informers.get();
    let classes: Informer<StorageClass> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    claims.on_change(move |c: &PersistentVolumeClaim| {
        if claim_provisioner(c) == Some(PROVISIONER) {
            q.add(format!("claim:{}", key_of(c)));
        }
    });
    let q = queue.clone();
    volumes.on_change(move |v: &PersistentVolume| {
        if provisioned_here(v) {
            q.add(format!("volume:{}", v.name_any()));
        }
    });
    // A helper pod's progress wakes the claim or volume it works for.
    let (q, c, v) = (queue.clone(), claims.clone(), volumes.clone());
    pods.on_change(move |p: &Pod| {
        let Some(pv) = p.labels().get(HELPER_LABEL) else {
            return;
        };
        if v.get(None, pv).is_some() {
            q.add(format!("volume:{pv}"));
        } else if let Some(claim) = c.list().into_iter().find(|c| volume_name_for(c) == *pv) {
            q.add(format!("claim:{}", key_of(claim.as_ref())));
        }
    });
    let p = Arc::new(Provisioner {
        client: ctx.client.clone(),
        settings,
        claims,
        volumes,
        classes,
        pods,
        events: Recorder::new(ctx.client.clone(), "rancher.io/local-path_k3rs"),
    });
    let mut tasks = run_workers("local-path-provisioner", queue, 2, shutdown.clone(), {
        let p = p.clone();
        move |key: String| {
            let p = p.clone();
            async move {
                match key.split_once(':') {
                    Some(("claim", claim)) => p.provision(claim).await,
                    Some(("volume", volume)) => p.delete(volume).await,
                    _ => Ok(None),
                }
            }
        }
    });
    tasks.spawn(async move {
        if let Err(err) = p.ensure_class().await {
            tracing::warn!(%err, "could not create the local-path StorageClass");
        }
    });
    tasks
}

fn provisioned_here(v: &PersistentVolume) -> bool {
    v.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(PROVISIONER)
}

/// The volume made for a claim: `pvc-<claim uid>`, as upstream's provisioners name them.
fn volume_name_for(claim: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", claim.uid().unwrap_or_default())
}

fn hostname_of(node: &Node) -> String {
    node.labels()
        .get("kubernetes.io/hostname")
        .cloned()
        .unwrap_or_else(|| node.name_any())
}

/// How far a helper pod got.
enum Helper {
    Running,
    Succeeded,
    Failed(String),
}

impl Provisioner {
    /// Creates the `local-path` class unless it exists (a user's edits to it are kept).
    async fn ensure_class(&self) -> Result<(), KubeError> {
        let class: StorageClass = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {ANN_DEFAULT_CLASS: "true"}},
            "provisioner": PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        }))
        .map_err(KubeError::SerdeError)?;
        let api: Api<StorageClass> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => {
                tracing::info!(class = CLASS, "created the default StorageClass");
                Ok(())
            }
            Err(KubeError::Api(s)) if s.code == 409 => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn provision(&self, key: &str) -> Outcome {
        self.claims.synced().await;
        self.volumes.synced().await;
        self.classes.synced().await;
        self.pods.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(claim) = self.claims.get(Some(ns), name) else {
            return Ok(None);
        };
        let bound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty());
        if bound || claim.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        let Some(class) = self.classes.get(None, claim_class(&claim)) else {
            return Ok(None);
        };
        if class.provisioner != PROVISIONER || claim_provisioner(&claim) != Some(PROVISIONER) {
            return Ok(None);
        }
        let pv_name = volume_name_for(&claim);
        if self.volumes.get(None, &pv_name).is_some() {
            self.remove_helper("create", &pv_name).await?;
            return Ok(None);
        }
        let Some(node_name) = selected_node(&claim).map(str::to_string) else {
            if class.volume_binding_mode.as_deref() != Some("WaitForFirstConsumer") {
                self.failed(&claim, "configuration error, no node was specified");
            }
            return Ok(None);
        };
        let spec = claim.spec.clone().unwrap_or_default();
        if spec.volume_mode.as_deref() == Some("Block") {
            self.failed(&claim, "local-path does not support volumeMode Block");
            return Ok(None);
        }
        let modes = spec.access_modes.clone().unwrap_or_default();
        if modes
            .iter()
            .any(|m| m != "ReadWriteOnce" && m != "ReadWriteOncePod")
        {
            self.failed(
                &claim,
                "NodePath only supports ReadWriteOnce and ReadWriteOncePod (1.22+) access modes",
            );
            return Ok(None);
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = match nodes.get(&node_name).await {
            Ok(n) => n,
            Err(KubeError::Api(s)) if s.code == 404 => {
                self.failed(&claim, &format!("nodes \"{node_name}\" not found"));
                return Err(crate::Error::Sync(format!("node {node_name} not found")));
            }
            Err(err) => return Err(err.into()),
        };
        let dir = self
            .settings
            .storage_dir
            .join(format!("{pv_name}_{ns}_{name}"));
        let size = requested(&claim).nanos / 1_000_000_000;
        match self
            .helper("create", &pv_name, &node_name, &dir, size)
            .await?
        {
            Helper::Running => return Ok(Some(Duration::from_secs(5))),
            Helper::Failed(why) => {
                self.remove_helper("create", &pv_name).await?;
                self.failed(&claim, &format!("create process failed: {why}"));
                return Err(crate::Error::Sync(format!(
                    "creating the directory of {pv_name} failed: {why}"
                )));
            }
            Helper::Succeeded => {}
        }
        let host = hostname_of(&node);
        let storage = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .cloned();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {
                ANN_PROVISIONED_BY: PROVISIONER, ANN_NODE: node_name}},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": modes,
                "persistentVolumeReclaimPolicy": class.reclaim_policy.as_deref().unwrap_or("Delete"),
                "storageClassName": class.name_any(),
                "mountOptions": class.mount_options,
                "volumeMode": "Filesystem",
                "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [host]}]}]}},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                    "name": name, "uid": claim.uid(), "resourceVersion": claim.resource_version()},
            },
        }))
        .map_err(|e| crate::Error::Sync(format!("building volume {pv_name}: {e}")))?;
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(KubeError::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
        self.events.normal(
            claim.as_ref(),
            "ProvisioningSucceeded",
            format!("Successfully provisioned volume {pv_name}"),
        );
        tracing::info!(claim = %key, volume = %pv_name, node = %node_name, "provisioned a local-path volume");
        self.remove_helper("create", &pv_name).await?;
        Ok(None)
    }

    fn failed(&self, claim: &PersistentVolumeClaim, why: &str) {
        self.events.warning(
            claim,
            "ProvisioningFailed",
            format!(
                "failed to provision volume with StorageClass \"{}\": {why}",
                claim_class(claim)
            ),
        );
    }

    async fn delete(&self, name: &str) -> Outcome {
        self.volumes.synced().await;
        self.pods.synced().await;
        let Some(pv) = self.volumes.get(None, name) else {
            return Ok(None);
        };
        let spec = pv.spec.clone().unwrap_or_default();
        if !provisioned_here(&pv)
            || volume_phase(&pv) != "Released"
            || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete")
            || pv.metadata.deletion_timestamp.is_some()
        {
            return Ok(None);
        }
        let Some(dir) = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path)) else {
            return Ok(None);
        };
        let Some(node) = pv.annotations().get(ANN_NODE).cloned() else {
            return Ok(None);
        };
        match self.helper("delete", name, &node, &dir, 0).await? {
            Helper::Running => return Ok(Some(Duration::from_secs(5))),
            Helper::Failed(why) => {
                self.remove_helper("delete", name).await?;
                self.events.warning(
                    pv.as_ref(),
                    "VolumeFailedDelete",
                    format!("failed to delete volume {name}: delete process failed: {why}"),
                );
                return Err(crate::Error::Sync(format!(
                    "removing the directory of {name} failed: {why}"
                )));
            }
            Helper::Succeeded => {}
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => {}
            Err(KubeError::Api(s)) if s.code == 404 => {}
            Err(err) => return Err(err.into()),
        }
        tracing::info!(volume = %name, node = %node, size = %capacity(&pv), "deleted a local-path volume");
        self.remove_helper("delete", name).await?;
        Ok(None)
    }

    fn helper_name(action: &str, pv: &str) -> String {
        let mut name = format!("helper-pod-{action}-{pv}");
        name.truncate(63);
        name
    }

    /// Starts (once) and reports the helper pod that runs `action` for volume `pv` in `dir` on `node`.
    async fn helper(
        &self,
        action: &str,
        pv: &str,
        node: &str,
        dir: &Path,
        size_bytes: i128,
    ) -> Result<Helper, crate::Error> {
        let name = Self::helper_name(action, pv);
        let ns = &self.settings.namespace;
        if let Some(pod) = self.pods.get(Some(ns), &name) {
            let status = pod.status.clone().unwrap_or_default();
            return Ok(match status.phase.as_deref() {
                Some("Succeeded") => Helper::Succeeded,
                Some("Failed") => {
                    let terminated = status
                        .container_statuses
                        .iter()
                        .flatten()
                        .find_map(|c| c.state.as_ref()?.terminated.clone());
                    Helper::Failed(match terminated {
                        Some(t) => format!(
                            "helper pod {ns}/{name} exited with code {}{}",
                            t.exit_code,
                            t.message.map(|m| format!(": {m}")).unwrap_or_default()
                        ),
                        None => format!(
                            "helper pod {ns}/{name} failed{}",
                            status.message.map(|m| format!(": {m}")).unwrap_or_default()
                        ),
                    })
                }
                _ => Helper::Running,
            });
        }
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let script = match action {
            "create" => "set -eu\nmkdir -m 0777 -p \"$VOL_DIR\"\n",
            _ => "set -eu\nrm -rf \"$VOL_DIR\"\n",
        };
        let pod: NewPod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns,
                "labels": {HELPER_LABEL: pv, MANAGED_BY: "k3rs-local-path-provisioner"}},
            "spec": {
                "nodeName": node,
                "restartPolicy": "Never",
                "automountServiceAccountToken": false,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "helper-pod",
                    "image": self.settings.helper_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", script],
                    "env": [
                        {"name": "VOL_DIR", "value": dir.to_string_lossy()},
                        {"name": "VOL_MODE", "value": "Filesystem"},
                        {"name": "VOL_SIZE_BYTES", "value": size_bytes.to_string()},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": parent.to_string_lossy()}],
                }],
                "volumes": [{"name": "data",
                    "hostPath": {"path": parent.to_string_lossy(), "type": "DirectoryOrCreate"}}],
            },
        }))
        .map_err(|e| crate::Error::Sync(format!("building helper pod {name}: {e}")))?;
        let api: Api<NewPod> = Api::namespaced(self.client.clone(), ns);
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => Ok(Helper::Running),
            Err(KubeError::Api(s)) if s.code == 409 => Ok(Helper::Running),
            Err(err) => Err(err.into()),
        }
    }

    async fn remove_helper(&self, action: &str, pv: &str) -> Result<(), crate::Error> {
        let name = Self::helper_name(action, pv);
        let ns = &self.settings.namespace;
        if self.pods.get(Some(ns), &name).is_none() {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(KubeError::Api(s)) if s.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
