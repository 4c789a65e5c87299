//! The `ttl-after-finished` controller: a finished Job (Complete or Failed) with
//! `ttlSecondsAfterFinished` is deleted that many seconds after it finished, its pods with it
//! (background propagation), guarded by its uid so a recreated Job of the same name is left alone.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::informers::{Informer, key_of, split_key};
use crate::queue::{Outcome, Queue, run_workers};

/// When the Job finished: its Complete or Failed condition's transition (or its completion time).
fn finished_at(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .or_else(|| status.completion_time.as_ref().map(|t| t.0))
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let jobs: Informer<Job> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    jobs.on_change(move |j| {
        if j.spec
            .as_ref()
            .and_then(|s| s.ttl_seconds_after_finished)
            .is_some()
        {
            q.add(key_of(j));
        }
    });
    let client = ctx.client.clone();
    let jobs = Arc::new(jobs);
    run_workers(
        "ttl-after-finished",
        queue,
        5,
        shutdown.clone(),
        move |key: String| {
            let (client, jobs) = (client.clone(), jobs.clone());
            async move { sync(client, &jobs, &key).await }
        },
    )
}

async fn sync(client: kube::Client, jobs: &Informer<Job>, key: &str) -> Outcome {
    jobs.synced().await;
    let (Some(ns), name) = split_key(key) else {
        return Ok(None);
    };
    let Some(job) = jobs.get(Some(ns), name) else {
        return Ok(None);
    };
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(None);
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let Some(done) = finished_at(&job) else {
        return Ok(None);
    };
    let left = done.as_millisecond() + i64::from(ttl) * 1000 - Timestamp::now().as_millisecond();
    if left > 0 {
        return Ok(Some(Duration::from_millis(left as u64)));
    }
    let api: Api<Job> = Api::namespaced(client, ns);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => {
            tracing::info!(job = %key, ttl, "deleted finished job after its TTL");
            Ok(None)
        }
        Err(KubeError::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(err) => Err(err.into()),
    }
}
