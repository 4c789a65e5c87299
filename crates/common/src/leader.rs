//! Leader election through a coordination.k8s.io Lease, as client-go's: a candidate takes the Lease when
//! it is free or its holder has not renewed it for `lease_duration` (measured on this candidate's clock,
//! from when it last saw the record change), the leader renews it every `retry_period` (optimistically:
//! one update of the Lease it last wrote, reading it again only when that fails) and gives up if it
//! cannot for `renew_deadline`. On a clean stop the leader releases the Lease so another takes over at
//! once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Error as KubeError;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Settings {
    /// The controller-manager's defaults: `kube-system/kube-controller-manager`, 15 s, 10 s, 2 s.
    pub fn controller_manager() -> Self {
        Self::lease("kube-controller-manager")
    }

    /// The scheduler's defaults: `kube-system/kube-scheduler`, 15 s, 10 s, 2 s.
    pub fn scheduler() -> Self {
        Self::lease("kube-scheduler")
    }

    /// Upstream's defaults for the Lease `kube-system/<name>`, with a unique identity for this process.
    pub fn lease(name: &str) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "k3rs".into());
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    s: Settings,
    /// The record last seen and when it was first seen so.
    observed: Option<(LeaseSpec, Instant)>,
    /// The Lease as this candidate last wrote it (its resourceVersion), while it leads.
    written: Option<Lease>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    pub fn new(client: kube::Client, s: Settings) -> Self {
        Self {
            api: Api::namespaced(client, &s.namespace),
            s,
            observed: None,
            written: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.s.identity
    }

    /// One attempt to take or renew the Lease; true if we hold it now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        // Fast path (client-go's): the leader, whose lease is still valid, updates the Lease it last
        // wrote without reading it first; a conflict means somebody else wrote it, so read it again.
        if let Some(mut lease) = self.written.take()
            && self.observed.as_ref().is_some_and(|(spec, at)| {
                at.elapsed()
                    < Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64)
            })
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(now());
            }
            match self.replace(&lease).await {
                Ok(()) => return Ok(true),
                Err(err) => {
                    tracing::warn!(%err, "updating the leader lease optimistically failed; reading it again")
                }
            }
        }
        let duration = self.s.lease_duration.as_secs() as i32;
        let Some(mut lease) = self.api.get_opt(&self.s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.s.name.clone()),
                    namespace: Some(self.s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.s.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.wrote(l);
                    Ok(true)
                }
                Err(KubeError::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(o, _)| *o != spec) {
            self.observed = Some((spec.clone(), Instant::now()));
        }
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.s.identity;
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.s.lease_duration, |s| {
                Duration::from_secs(s.max(0) as u64)
            });
        let fresh = self
            .observed
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < held_for);
        if !holder.is_empty() && !mine && fresh {
            return Ok(false);
        }
        let mut next = spec.clone();
        if !mine {
            next.acquire_time = Some(now());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.s.identity.clone());
        next.lease_duration_seconds = Some(duration);
        next.renew_time = Some(now());
        lease.spec = Some(next);
        lease.metadata.managed_fields = None;
        match self.replace(&lease).await {
            Ok(()) => Ok(true),
            Err(KubeError::Api(s)) if s.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Writes `lease` over the stored one (a conflict if it changed since `lease` was read); on success
    /// this candidate leads.
    async fn replace(&mut self, lease: &Lease) -> Result<(), KubeError> {
        let l = self
            .api
            .replace(&self.s.name, &PostParams::default(), lease)
            .await?;
        self.wrote(l);
        Ok(())
    }

    /// Records the Lease as this candidate just wrote it (it leads).
    fn wrote(&mut self, mut lease: Lease) {
        lease.metadata.managed_fields = None;
        self.observed = lease.spec.clone().map(|s| (s, Instant::now()));
        self.written = Some(lease);
    }

    /// Waits until this candidate leads (false if `shutdown` came first).
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %format!("{}/{}", self.s.namespace, self.s.name), identity = %self.s.identity, "became leader");
                    return true;
                }
                Ok(false) => {
                    if !logged {
                        let holder = self
                            .observed
                            .as_ref()
                            .and_then(|(s, _)| s.holder_identity.clone())
                            .unwrap_or_default();
                        tracing::info!(%holder, "waiting to become leader");
                        logged = true;
                    }
                }
                Err(err) => tracing::warn!(%err, "leader election: lease not reachable"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.s.retry_period) => {}
            }
        }
    }

    /// Renews until `shutdown` (then releases the Lease and returns true) or until renewing has failed
    /// for `renew_deadline` (returns false: leadership is lost).
    pub async fn hold(&mut self, shutdown: &CancellationToken) -> bool {
        let mut last_ok = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return true;
                }
                _ = tokio::time::sleep(self.s.retry_period) => {}
            }
            let attempt =
                tokio::time::timeout(self.s.renew_deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => last_ok = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!("leader election lost: another candidate holds the lease");
                    return false;
                }
                Ok(Err(err)) => tracing::warn!(%err, "renewing the leader lease failed"),
                Err(_) => tracing::warn!("renewing the leader lease timed out"),
            }
            if last_ok.elapsed() >= self.s.renew_deadline {
                tracing::error!("leader election lost: could not renew the lease in time");
                return false;
            }
        }
    }

    /// Gives the Lease up (upstream's ReleaseOnCancel): another candidate may take it at once.
    async fn release(&mut self) {
        self.written = None;
        let Ok(Some(mut lease)) = self.api.get_opt(&self.s.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.s.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        lease.metadata.managed_fields = None;
        match self
            .api
            .replace(&self.s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(err) => tracing::warn!(%err, "releasing the leader lease failed"),
        }
    }
}
