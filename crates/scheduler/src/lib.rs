//! k3rs-scheduler: places pending pods on nodes as kube-scheduler does, as a Kubernetes API client
//! (kube-rs) and nothing else. The watches (`informers`) fill a cache of nodes and the pods on them
//! (`cache`) and a priority queue of pending pods (`queue`); each attempt (`schedule`) runs the
//! profile's plugins (`framework`, `plugins`), with preemption (`preemption`) when nothing fits; the
//! running loop (`scheduler`) binds through `pods/binding` or reports why not.
//!
//! `run` serves until cancelled; the binary (`k3rs-scheduler`) and the launcher build a [`Config`]
//! and call it.
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod framework;
pub mod informers;
pub mod metrics;
pub mod plugins;
pub mod pod;
pub mod preemption;
pub mod queue;
pub use k3rs_common::resources;
pub mod schedule;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k3rs_common::leader;
use k3rs_common::{HealthServer, HealthState, Readiness};
use tokio_util::sync::CancellationToken;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("leader election lost")]
    LeaderLost,
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

async fn client(config: &Config) -> Result<kube::Client, Error> {
    let kube_config = k3rs_common::client::config(config.kubeconfig.as_deref())
        .await
        .map_err(Error::Kubeconfig)?;
    Ok(kube::Client::try_from(kube_config)?)
}

/// Schedules until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_readiness(config, shutdown, Readiness::new()).await
}

/// As [`run`], setting `ready` once leading with every cache synced.
pub async fn run_with_readiness(
    config: Config,
    shutdown: CancellationToken,
    ready: Readiness,
) -> Result<(), Error> {
    let client = client(&config).await?;
    let (metrics, registry) = metrics::Metrics::new();
    if let Some(addr) = config.health_bind_address {
        let state = HealthState::new(ready.clone(), Arc::new(registry));
        HealthServer::spawn(addr, state, &shutdown)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
    }
    // Only the leader schedules; it stops on shutdown or when leadership is lost.
    let work = shutdown.child_token();
    if config.leader_election.leader_elect {
        let mut elector =
            leader::Elector::new(client.clone(), config.leader_election.settings.clone());
        if !elector.acquire(&shutdown).await {
            return Ok(());
        }
        tracing::info!(identity = elector.identity(), "leading");
        let w = work.clone();
        let s = shutdown.clone();
        tokio::spawn(async move {
            if !elector.hold(&s).await {
                tracing::error!("leader election lost");
                w.cancel();
            }
        });
    }
    let queue = queue::Queue::new(config.initial_backoff, config.max_backoff);
    let sched = Arc::new(scheduler::Scheduler::new(
        client,
        config.profiles.clone(),
        queue,
        metrics.clone(),
        config.parallel_bindings,
    ));
    tokio::select! {
        _ = informers::start(&sched, &work) => {}
        _ = work.cancelled() => return stopped(&shutdown),
    }
    {
        let cache = sched.cache.lock();
        tracing::info!(
            nodes = cache.node_count(),
            pods = cache.pod_count(),
            "caches synced; scheduling"
        );
    }
    ready.set(true);
    tokio::spawn(housekeeping(sched.clone(), work.clone()));
    sched.clone().run(work.clone()).await;
    sched.queue.close();
    ready.set(false);
    stopped(&shutdown)
}

fn stopped(shutdown: &CancellationToken) -> Result<(), Error> {
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        // Leadership lost: exit so a supervisor restarts us as a candidate (as upstream does).
        Err(Error::LeaderLost)
    }
}

/// Backoff expiry, the unschedulable timeout, and the gauges.
async fn housekeeping(s: Arc<scheduler::Scheduler>, shutdown: CancellationToken) {
    let mut last_timeout = std::time::Instant::now();
    loop {
        let next = s.queue.flush_backoff();
        if last_timeout.elapsed() >= Duration::from_secs(30) {
            last_timeout = std::time::Instant::now();
            s.on_event(framework::Event::Timeout);
        }
        let sizes = s.queue.sizes();
        for (q, n) in [
            ("active", sizes.active),
            ("backoff", sizes.backoff),
            ("unschedulable", sizes.unschedulable),
            ("gated", sizes.gated),
        ] {
            s.metrics
                .pending
                .get_or_create(&vec![("queue", q.to_string())])
                .set(n as i64);
        }
        {
            let cache = s.cache.lock();
            for (t, n) in [("nodes", cache.node_count()), ("pods", cache.pod_count())] {
                s.metrics
                    .cache_size
                    .get_or_create(&vec![("type", t.to_string())])
                    .set(n as i64);
            }
        }
        let wait = next
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(20), Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
