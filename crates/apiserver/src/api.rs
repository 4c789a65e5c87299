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
    /// `host:port` clients should use (discovery's `serverAddressByClientCIDRs`).
    pub advertise: String,
    pub ready: k3rs_common::Readiness,
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.plural == "services"
}

impl Api {
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
    pub async fn before_update(
        &self,
        info: &ResourceInfo,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        if is_service(info) {
            let mut reserved = Reserved::default();
            self.allocators
                .on_update(&self.storage, old, new, &mut reserved)
                .await?;
            let keep = Allocators::keys_of(new);
            let dropped: Vec<String> = Allocators::keys_of(old)
                .into_iter()
                .filter(|k| !keep.contains(k))
                .collect();
            Allocators::release(&self.storage, &dropped).await;
        }
        Ok(())
    }

    /// Runs after an object was deleted from storage.
    pub async fn after_delete(&self, info: &ResourceInfo, obj: &Value) {
        if is_service(info) {
            Allocators::release(&self.storage, &Allocators::keys_of(obj)).await;
        }
    }
}
