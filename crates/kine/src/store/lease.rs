//! Leases: grant, revoke, keep-alive, time-to-live and listing, plus the expiry loop that revokes leases
//! whose TTL ran out (their keys are deleted in one revision, which watchers see).

use std::sync::Arc;
use std::time::Duration;

use super::{Op, OpResult, Store};
use crate::error::EtcdError;
use crate::pb::{LeaseGrantResponse, LeaseLeasesResponse, LeaseStatus, LeaseTimeToLiveResponse};

/// How often expired leases are looked for.
const EXPIRY_INTERVAL: Duration = Duration::from_millis(500);

impl Store {
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, EtcdError> {
        let id = if id == 0 {
            crate::util::random_id()
        } else {
            id
        };
        if id < 0 {
            return Err(EtcdError::InvalidArgument(
                "etcdserver: lease id must be positive".into(),
            ));
        }
        match self.submit(Op::LeaseGrant { id, ttl }).await? {
            OpResult::LeaseGrant { id, ttl, rev } => Ok(LeaseGrantResponse {
                header: Some(self.header(rev)),
                id,
                ttl,
                error: String::new(),
            }),
            _ => Err(EtcdError::storage("lease grant produced no response")),
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<i64, EtcdError> {
        match self
            .submit(Op::LeaseRevoke {
                id,
                only_if_expired: false,
            })
            .await?
        {
            OpResult::LeaseRevoke { rev } => Ok(rev),
            _ => Err(EtcdError::storage("lease revoke produced no response")),
        }
    }

    /// Renews a lease; the TTL is 0 when it does not exist (as etcd answers).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<(i64, i64), EtcdError> {
        match self.submit(Op::LeaseKeepAlive { id }).await? {
            OpResult::LeaseKeepAlive { ttl, rev } => Ok((ttl, rev)),
            _ => Err(EtcdError::storage("keep-alive produced no response")),
        }
    }

    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, EtcdError> {
        self.linearize().await?;
        let rev = self.rev();
        let Some(rec) = self.db.lease_get(id).await? else {
            return Ok(LeaseTimeToLiveResponse {
                header: Some(self.header(rev)),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            });
        };
        let remaining = ((rec.expiry - crate::util::now_ms()) / 1000).max(0);
        let keys = if keys {
            self.state().lease_keys(id).map(|k| k.to_vec()).collect()
        } else {
            Vec::new()
        };
        Ok(LeaseTimeToLiveResponse {
            header: Some(self.header(rev)),
            id,
            ttl: remaining,
            granted_ttl: rec.ttl,
            keys,
        })
    }

    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse, EtcdError> {
        let leases = self.db.lease_list().await?;
        Ok(LeaseLeasesResponse {
            header: Some(self.header(self.rev())),
            leases: leases
                .into_iter()
                .map(|l| LeaseStatus { id: l.id })
                .collect(),
        })
    }
}

/// Revokes expired leases until shutdown.
pub async fn expiry_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = store.shutdown.cancelled() => return,
        }
        let expired = match store.db.lease_expired(crate::util::now_ms()).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(%err, "looking for expired leases");
                continue;
            }
        };
        for id in expired {
            match store
                .submit(Op::LeaseRevoke {
                    id,
                    only_if_expired: true,
                })
                .await
            {
                Ok(_) => tracing::debug!(lease = id, "lease expired"),
                // Revoked meanwhile (by a client or another kine process).
                Err(EtcdError::LeaseNotFound) => {}
                Err(err) => tracing::warn!(%err, lease = id, "revoking expired lease"),
            }
        }
    }
}
