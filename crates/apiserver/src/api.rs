//! The shared state of the handlers (storage, resource table, allocators, metrics) and the per-kind hooks
//! that run around writes (Service address and port allocation).

use serde_json::Value;

use crate::allocators::{Allocators, Reserved};
use crate::metrics::Metrics;
use crate::resources::{Registry, ResourceInfo};
use crate::status::ApiError;
use crate::storage::Storage;

/// What the handlers share.
#[derive(Debug)]
pub struct Api {
    pub storage: Storage,
    pub registry: Registry,
    pub allocators: Allocators,
    pub metrics: Metrics,
    /// One shared etcd watch per resource type.
    pub watch_cache: crate::watchcache::WatchCache,
    /// `host:port` clients should use (discovery's `serverAddressByClientCIDRs`).
    pub advertise: String,
    pub ready: k3rs_common::Readiness,
    /// Reaches kubelets (logs, exec, attach, port-forward, node proxy) and pods (pod and service proxy).
    pub backends: Option<crate::backend::Backends>,
    /// The CAs client certificates come from (users, front proxies).
    pub client_cas: Option<crate::auth::x509::ClientCas>,
    /// Who a request is (certificates, tokens).
    pub authn: crate::auth::Authenticator,
    /// Roles and bindings, kept current for the RBAC authorizer.
    pub rbac: crate::authz::rbac::RbacCache,
    /// What pods on each node reference, for the node authorizer.
    pub pods: std::sync::Arc<crate::informer::Informer<crate::authz::node::PodRefs>>,
    /// What admission reads on every pod create: LimitRanges, PriorityClasses, ResourceQuotas (to know
    /// which namespaces have any) and Namespaces (PodSecurity labels).
    pub limit_ranges: std::sync::Arc<crate::informer::Informer<Value>>,
    pub priority_classes: std::sync::Arc<crate::informer::Informer<Value>>,
    pub quotas: std::sync::Arc<crate::informer::Informer<Value>>,
    pub namespaces: std::sync::Arc<crate::informer::Informer<Value>>,
    /// The node authorizer's static rules (the bootstrap `system:node` role's).
    pub node_rules: Vec<crate::authz::rbac::PolicyRule>,
    /// The agent join path (`/cacerts`, `/v1-k3rs/node-credentials`).
    pub supervisor: Option<crate::supervisor::Supervisor>,
    /// The audit log, when `--audit-log-path` is set.
    pub audit: Option<crate::audit::Auditor>,
    /// The encryption configuration file, when Secrets are encrypted at rest.
    pub encryption_config: Option<std::path::PathBuf>,
    /// Which admission plugins run.
    pub admission: crate::admission::Plugins,
}

/// Reservations an update took and would give up, settled once the write is known to have happened or not.
#[derive(Debug, Default)]
pub struct PendingUpdate {
    reserved: Reserved,
    dropped: Vec<String>,
}

fn is_crd(info: &ResourceInfo) -> bool {
    info.custom.is_none()
        && info.group == "apiextensions.k8s.io"
        && info.plural == "customresourcedefinitions"
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "services"
}

impl Api {
    pub fn node_rules(&self) -> &[crate::authz::rbac::PolicyRule] {
        &self.node_rules
    }

    /// Starts the informers authorization reads; returns once they have listed.
    pub async fn start_informers(
        self: &std::sync::Arc<Self>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        let r = &self.rbac;
        for inf in [&r.roles, &r.cluster_roles] {
            tokio::spawn(inf.clone().run(self.clone(), shutdown.clone()));
        }
        for inf in [&r.role_bindings, &r.cluster_role_bindings] {
            tokio::spawn(inf.clone().run(self.clone(), shutdown.clone()));
        }
        tokio::spawn(self.pods.clone().run(self.clone(), shutdown.clone()));
        let plain = [
            &self.limit_ranges,
            &self.priority_classes,
            &self.quotas,
            &self.namespaces,
        ];
        for inf in plain {
            tokio::spawn(inf.clone().run(self.clone(), shutdown.clone()));
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = async {
                r.roles.wait_synced().await;
                r.cluster_roles.wait_synced().await;
                r.role_bindings.wait_synced().await;
                r.cluster_role_bindings.wait_synced().await;
                self.pods.wait_synced().await;
                for inf in plain {
                    inf.wait_synced().await;
                }
            } => {}
        }
    }

    /// Runs before an object is first stored; returns what to undo if the store fails.
    pub async fn before_create(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
    ) -> Result<Reserved, ApiError> {
        let mut reserved = Reserved::default();
        if is_service(info)
            && let Err(e) = self
                .allocators
                .on_create(&self.storage, obj, &mut reserved)
                .await
        {
            self.undo_create(reserved).await;
            return Err(e);
        }
        Ok(reserved)
    }

    /// Releases what `before_create` reserved for a write that did not happen.
    pub async fn undo_create(&self, reserved: Reserved) {
        Allocators::release(&self.storage, &reserved.keys).await;
    }

    /// Runs before an update is stored.
    /// Returns what the write holds: [`Api::update_stored`] or [`Api::update_abandoned`] settles it.
    pub async fn before_update(
        &self,
        info: &ResourceInfo,
        old: &Value,
        new: &mut Value,
    ) -> Result<PendingUpdate, ApiError> {
        let mut pending = PendingUpdate::default();
        if is_service(info) {
            if let Err(e) = self
                .allocators
                .on_update(&self.storage, old, new, &mut pending.reserved)
                .await
            {
                self.update_abandoned(pending).await;
                return Err(e);
            }
            let keep = Allocators::keys_of(new);
            pending.dropped = Allocators::keys_of(old)
                .into_iter()
                .filter(|k| !keep.contains(k))
                .collect();
        }
        Ok(pending)
    }

    /// The update was stored: what the old object held and the new one does not is free now.
    pub async fn update_stored(&self, pending: PendingUpdate) {
        Allocators::release(&self.storage, &pending.dropped).await;
    }

    /// The update was not stored: what it reserved is free again, the old object keeps its own.
    pub async fn update_abandoned(&self, pending: PendingUpdate) {
        Allocators::release(&self.storage, &pending.reserved.keys).await;
    }

    /// Runs after an object was stored (created or updated).
    pub fn after_write(&self, info: &ResourceInfo, obj: &Value) {
        if is_crd(info) {
            // Serve it at once (the CRD watch also does, for every apiserver).
            crate::crd::register(self, obj);
        }
    }

    /// Runs after an object was deleted from storage.
    pub async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            crate::admission::resource_quota::refresh(self, ns, false).await;
        }
        if is_crd(info) {
            // The CRD is gone: so are its objects (upstream's customresourcecleanup finalizer).
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            let group = obj["spec"]["group"].as_str().unwrap_or("");
            let plural = obj["spec"]["names"]["plural"].as_str().unwrap_or("");
            self.registry.remove_custom(name);
            if !group.is_empty() && !plural.is_empty() {
                let prefix = format!("/registry/{group}/{plural}/");
                if let Err(err) = self.storage.delete_prefix(&prefix).await {
                    tracing::warn!(%err, crd = name, "deleting the custom resources of a deleted CRD");
                }
            }
        }
        if is_service(info) {
            Allocators::release(&self.storage, &Allocators::keys_of(obj)).await;
        }
    }
}
