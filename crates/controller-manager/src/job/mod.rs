//! The Job controller, after upstream's: pods from the template up to `parallelism` (and the remaining
//! `completions`), NonIndexed or Indexed (one pod per completion index), finished pods counted through the
//! `batch.kubernetes.io/job-tracking` finalizer and `uncountedTerminatedPods` so no pod is lost or counted
//! twice, failed pods replaced after an exponential backoff (10 s doubling to 10 min), the Job failed at
//! `backoffLimit`, `activeDeadlineSeconds` or a pod-failure-policy `FailJob` rule, suspend and resume,
//! and the interim (`SuccessCriteriaMet`, `FailureTarget`) then final (`Complete`, `Failed`) conditions.

pub mod util;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Error as KubeError, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::expectations::Expectations;
use crate::informers::{Change, Informer, controller_of, key_of, split_key};
use crate::pod::Pod;
use crate::queue::{Outcome, Queue, run_workers};
use util::*;

const BURST: usize = 500;

/// Failures since the last success, and when the last one happened (upstream's backoff record).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    last: Timestamp,
}

struct Controller {
    client: kube::Client,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    expectations: Expectations,
    backoff: Mutex<HashMap<String, Backoff>>,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let jobs: Informer<Job> = ctx.informers.get();
    let pods: Informer<Pod> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        expectations: Expectations::default(),
        backoff: Mutex::new(HashMap::new()),
        events: Recorder::new(ctx.client.clone(), "job-controller"),
    });
    let q = queue.clone();
    let ctl = c.clone();
    jobs.on_event(move |change| {
        let key = key_of(change.object());
        if let Change::Deleted(_) = change {
            ctl.expectations.forget(&key);
            ctl.backoff.lock().remove(&key);
        }
        q.add(key);
    });
    let q = queue.clone();
    let ctl = c.clone();
    pods.on_event(move |change| {
        let pod = change.object();
        let Some((job, _)) = controller_of(pod, "Job") else {
            return;
        };
        let key = format!("{}/{job}", pod.namespace().unwrap_or_default());
        match change {
            Change::Added(_) => ctl.expectations.creation_observed(&key),
            Change::Deleted(p) => ctl.expectations.deletion_observed(&key, &key_of(*p)),
            Change::Updated { old, new } => {
                if new.metadata.deletion_timestamp.is_some()
                    && old.metadata.deletion_timestamp.is_none()
                {
                    ctl.expectations.deletion_observed(&key, &key_of(*new));
                }
            }
        }
        // A tracked pod whose Job is gone still needs its finalizer removed.
        if ctl.jobs.get(pod.namespace().as_deref(), &job).is_none()
            && pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
        {
            q.add(format!("orphan:{}", key_of(pod)));
            return;
        }
        q.add(key);
    });
    run_workers("job", queue, 5, shutdown.clone(), move |key: String| {
        let c = c.clone();
        async move {
            match key.strip_prefix("orphan:") {
                Some(pod) => c.release_orphan(pod).await,
                None => c.sync(&key).await,
            }
        }
    })
}

fn condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn set_condition(
    status: &mut JobStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: &str,
) -> bool {
    let now = Some(Time(Timestamp::now()));
    let v = if value { "True" } else { "False" };
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status == v && c.reason.as_deref() == Some(reason) {
            return false;
        }
        if c.status != v {
            c.last_transition_time = now.clone();
        }
        c.status = v.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = now;
        return true;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: v.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: now.clone(),
        last_transition_time: now,
    });
    true
}

pub fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .is_some_and(|s| condition(s, "Complete").is_some() || condition(s, "Failed").is_some())
}

impl Controller {
    fn api(&self, ns: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn write_status(&self, job: &mut Job) -> Result<(), crate::Error> {
        job.metadata.managed_fields = None;
        let api = self.api(&job.namespace().unwrap_or_default());
        *job = api
            .replace_status(&job.name_any(), &PostParams::default(), job)
            .await?;
        Ok(())
    }

    /// Removes the tracking finalizer from a pod; false if the pod changed meanwhile.
    async fn remove_finalizer(&self, pod: &Pod) -> Result<(), crate::Error> {
        if !pod.finalizers().iter().any(|f| f == TRACKING_FINALIZER) {
            return Ok(());
        }
        let rest: Vec<&String> = pod
            .finalizers()
            .iter()
            .filter(|f| *f != TRACKING_FINALIZER)
            .collect();
        // An empty list is written as none, as upstream's omitempty leaves it.
        let finalizers = if rest.is_empty() {
            json!(null)
        } else {
            json!(rest)
        };
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": pod.resource_version()}});
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(KubeError::Api(s)) if s.code == 404 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn release_orphan(&self, key: &str) -> Outcome {
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        if let Some(pod) = self.pods.get(Some(ns), name) {
            let job_gone = controller_of(pod.as_ref(), "Job")
                .is_none_or(|(j, _)| self.jobs.get(Some(ns), &j).is_none());
            if job_gone {
                self.remove_finalizer(&pod).await?;
            }
        }
        Ok(None)
    }

    async fn delete_pods(
        &self,
        job: &Job,
        key: &str,
        pods: &[Arc<Pod>],
    ) -> Result<(), crate::Error> {
        crate::owned::delete_pods(
            &self.client,
            &self.events,
            &self.expectations,
            job,
            key,
            pods,
        )
        .await?;
        Ok(())
    }

    async fn sync(&self, key: &str) -> Outcome {
        self.jobs.synced().await;
        self.pods.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(job) = self.jobs.get(Some(ns), name) else {
            self.expectations.forget(key);
            return Ok(None);
        };
        let mut job = (*job).clone();
        let uid = job.uid().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .list_in(ns)
            .into_iter()
            .filter(|p| controller_of(p.as_ref(), "Job").is_some_and(|(_, u)| u == uid))
            .collect();
        if finished(&job) {
            // Leftover tracked pods lose the finalizer; nothing else happens to a finished Job.
            for p in pods.iter().filter(|p| !active(p)) {
                self.remove_finalizer(p).await?;
            }
            return Ok(None);
        }
        let now = Timestamp::now();
        let spec = job.spec.clone().unwrap_or_default();
        let suspended = spec.suspend.unwrap_or(false);
        let mut status = job.status.clone().unwrap_or_default();
        let before = status.clone();

        // 1. Finished pods still carrying the finalizer are recorded as uncounted, then released, then
        //    counted (upstream's three steps: nothing is counted twice or lost).
        let mut uncounted = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let known: BTreeSet<String> = uncounted
            .succeeded
            .iter()
            .flatten()
            .chain(uncounted.failed.iter().flatten())
            .cloned()
            .collect();
        let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or(""));
        let mut fail_job: Option<(String, String)> = None;
        let mut newly_finished = Vec::new();
        // Successes (None) and failures (when) among them, for the backoff once they are recorded.
        let mut failures_seen: Vec<Option<Timestamp>> = Vec::new();
        // Pods released without being counted: ignored by the failure policy, stopped after success,
        // and recorded pods whose finalizer removal failed before.
        let mut ignored = Vec::new();
        let finishing_ok = condition(&status, "SuccessCriteriaMet").is_some();
        for p in &pods {
            let tracked = p.finalizers().iter().any(|f| f == TRACKING_FINALIZER);
            let pod_uid = p.uid().unwrap_or_default();
            if !tracked || active(p) {
                continue;
            }
            if known.contains(&pod_uid) || (finishing_ok && !succeeded(p)) {
                ignored.push(p.clone());
                continue;
            }
            if succeeded(p) {
                uncounted
                    .succeeded
                    .get_or_insert_with(Vec::new)
                    .push(pod_uid);
                if let Some(i) = pod_index(p) {
                    completed.insert(i);
                }
                failures_seen.push(None);
            } else {
                match failure_policy(&job, p) {
                    Some((action, _)) if action == "Ignore" => {
                        ignored.push(p.clone());
                        continue;
                    }
                    Some((action, msg)) if action == "FailJob" => {
                        fail_job.get_or_insert(("PodFailurePolicy".into(), msg));
                    }
                    _ => {}
                }
                uncounted.failed.get_or_insert_with(Vec::new).push(pod_uid);
                failures_seen.push(Some(finished_at(p)));
            }
            newly_finished.push(p.clone());
        }
        if indexed(&job) {
            status.completed_indexes = Some(format_indexes(&completed));
        }
        if !newly_finished.is_empty() {
            status.uncounted_terminated_pods = Some(uncounted.clone());
            job.status = Some(status.clone());
            self.write_status(&mut job).await?;
            status = job.status.clone().unwrap_or_default();
            // Recorded: each pod enters the backoff once (a failed write leaves it for the next sync).
            let mut b = self.backoff.lock();
            for seen in failures_seen {
                match seen {
                    None => {
                        b.remove(key);
                    }
                    Some(at) => {
                        let e = b.entry(key.to_string()).or_insert(Backoff {
                            failures: 0,
                            last: at,
                        });
                        e.failures += 1;
                        e.last = e.last.max(at);
                    }
                }
            }
        }
        for p in newly_finished.iter().chain(ignored.iter()) {
            self.remove_finalizer(p).await?;
        }
        // Uncounted pods whose finalizer is gone (or who are gone) are counted now.
        let released: BTreeSet<String> = newly_finished
            .iter()
            .chain(ignored.iter())
            .filter_map(|p| p.uid())
            .collect();
        let still_tracked: BTreeSet<String> = pods
            .iter()
            .filter(|p| p.finalizers().iter().any(|f| f == TRACKING_FINALIZER))
            .filter_map(|p| p.uid())
            .filter(|u| !released.contains(u))
            .collect();
        let flush = |list: &mut Option<Vec<String>>, counter: &mut Option<i32>| {
            let Some(uids) = list.as_mut() else { return };
            let before = uids.len();
            uids.retain(|u| still_tracked.contains(u));
            *counter = Some(counter.unwrap_or(0) + (before - uids.len()) as i32);
        };
        let mut un = status.uncounted_terminated_pods.clone().unwrap_or_default();
        flush(&mut un.succeeded, &mut status.succeeded);
        flush(&mut un.failed, &mut status.failed);
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: un.succeeded.filter(|v| !v.is_empty()),
            failed: un.failed.filter(|v| !v.is_empty()),
        });
        let pending_uncounted = status
            .uncounted_terminated_pods
            .as_ref()
            .is_some_and(|u| u.succeeded.is_some() || u.failed.is_some());

        // 2. Counts.
        let active_pods: Vec<Arc<Pod>> = pods.iter().filter(|p| active(p)).cloned().collect();
        let terminating = pods
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_some()
                    && !succeeded(p)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed")
            })
            .count() as i32;
        let count = |v: &Option<Vec<String>>| v.as_ref().map_or(0, Vec::len) as i32;
        let un = status.uncounted_terminated_pods.clone().unwrap_or_default();
        let succeeded_total = status.succeeded.unwrap_or(0) + count(&un.succeeded);
        let failed_total = status.failed.unwrap_or(0) + count(&un.failed);
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let completions = spec.completions;
        let mut requeue: Option<Duration> = None;

        // 3. Failure and success.
        if status.start_time.is_none() && !suspended {
            status.start_time = Some(Time(now));
        }
        let interim_failed = condition(&status, "FailureTarget").is_some();
        let interim_done = condition(&status, "SuccessCriteriaMet").is_some();
        if !interim_failed && !interim_done {
            let backoff_limit = spec.backoff_limit.unwrap_or(6);
            let deadline = spec
                .active_deadline_seconds
                .zip(status.start_time.as_ref())
                .map(|(s, t)| t.0.as_second() + s - now.as_second());
            let failure = fail_job
                .or_else(|| {
                    (failed_total > backoff_limit).then(|| {
                        (
                            "BackoffLimitExceeded".to_string(),
                            "Job has reached the specified backoff limit".to_string(),
                        )
                    })
                })
                .or_else(|| {
                    (!suspended && deadline.is_some_and(|d| d <= 0)).then(|| {
                        (
                            "DeadlineExceeded".to_string(),
                            "Job was active longer than specified deadline".to_string(),
                        )
                    })
                });
            if let Some((reason, message)) = failure {
                set_condition(&mut status, "FailureTarget", true, &reason, &message);
                self.events.warning(&job, &reason, message);
            } else {
                let done = match completions {
                    Some(c) if indexed(&job) => (0..c).all(|i| completed.contains(&i)),
                    Some(c) => succeeded_total >= c,
                    None => succeeded_total > 0 && active_pods.is_empty(),
                };
                if done {
                    set_condition(
                        &mut status,
                        "SuccessCriteriaMet",
                        true,
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                }
            }
            if let Some(d) = deadline.filter(|d| *d > 0) {
                requeue = Some(Duration::from_secs(d as u64));
            }
        }
        let failing = condition(&status, "FailureTarget").is_some();
        let succeeding = condition(&status, "SuccessCriteriaMet").is_some();
        if failing || succeeding {
            // Finishing: no pod keeps running; the final condition once none is left to count.
            self.delete_pods(&job, key, &active_pods).await?;
            let left = pods.iter().any(|p| active(p)) || pending_uncounted || terminating > 0;
            if !left && active_pods.is_empty() {
                if failing {
                    let c = condition(&status, "FailureTarget")
                        .cloned()
                        .unwrap_or_default();
                    set_condition(
                        &mut status,
                        "Failed",
                        true,
                        c.reason.as_deref().unwrap_or(""),
                        c.message.as_deref().unwrap_or(""),
                    );
                } else {
                    set_condition(
                        &mut status,
                        "Complete",
                        true,
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    );
                    status.completion_time = Some(Time(now));
                    self.events
                        .normal(&job, "Completed", "Job completed".into());
                }
            }
        } else if suspended {
            self.delete_pods(&job, key, &active_pods).await?;
            if set_condition(
                &mut status,
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
            ) {
                self.events
                    .normal(&job, "Suspended", "Job suspended".into());
            }
            status.start_time = None;
        } else {
            if condition(&status, "Suspended").is_some() {
                set_condition(&mut status, "Suspended", false, "JobResumed", "Job resumed");
                self.events.normal(&job, "Resumed", "Job resumed".into());
            }
            if self.expectations.satisfied(key) {
                let wait = self
                    .manage(
                        &job,
                        key,
                        &active_pods,
                        succeeded_total,
                        parallelism,
                        completions,
                        &completed,
                        now,
                    )
                    .await?;
                requeue = match (requeue, wait) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        status.active = Some(active_pods.len() as i32);
        status.ready = Some(
            active_pods
                .iter()
                .filter(|p| crate::replicaset::ready_since(p).is_some())
                .count() as i32,
        );
        status.terminating = Some(terminating);
        if status != before || job.status.as_ref() != Some(&status) {
            job.status = Some(status);
            self.write_status(&mut job).await?;
        }
        Ok(requeue)
    }

    /// Creates or deletes pods towards the wanted number of active ones; returns how long to wait when a
    /// failure backoff holds new pods back.
    #[allow(clippy::too_many_arguments)]
    async fn manage(
        &self,
        job: &Job,
        key: &str,
        active_pods: &[Arc<Pod>],
        succeeded_total: i32,
        parallelism: i32,
        completions: Option<i32>,
        completed: &BTreeSet<i32>,
        now: Timestamp,
    ) -> Result<Option<Duration>, crate::Error> {
        let active = active_pods.len() as i32;
        // Surplus and duplicate pods go first.
        let mut remove: Vec<Arc<Pod>> = Vec::new();
        let mut wanted_indexes: Vec<i32> = Vec::new();
        if indexed(job) {
            let total = completions.unwrap_or(0);
            let mut held = BTreeSet::new();
            for p in active_pods {
                match pod_index(p) {
                    Some(i) if i < total && !completed.contains(&i) && held.insert(i) => {}
                    _ => remove.push(p.clone()),
                }
            }
            let mut kept = active - remove.len() as i32;
            // Parallelism lowered: the highest indexes stop.
            let mut kept_pods: Vec<Arc<Pod>> = active_pods
                .iter()
                .filter(|p| !remove.iter().any(|r| r.uid() == p.uid()))
                .cloned()
                .collect();
            kept_pods.sort_by_key(|p| std::cmp::Reverse(pod_index(p)));
            while kept > parallelism {
                if let Some(p) = kept_pods.first().cloned() {
                    kept_pods.remove(0);
                    remove.push(p);
                }
                kept -= 1;
            }
            let room = (parallelism - kept).max(0) as usize;
            wanted_indexes = (0..total)
                .filter(|i| !completed.contains(i) && !held.contains(i))
                .take(room)
                .collect();
        } else {
            let want = match completions {
                None if succeeded_total > 0 => active,
                None => parallelism,
                Some(c) => (c - succeeded_total).clamp(0, parallelism),
            };
            if active > want {
                remove = crate::replicaset::pods_to_delete(active_pods, (active - want) as usize);
            } else {
                wanted_indexes = vec![-1; (want - active) as usize];
            }
        }
        self.delete_pods(job, key, &remove).await?;
        if wanted_indexes.is_empty() {
            return Ok(None);
        }
        if let Some(b) = self.backoff.lock().get(key).copied() {
            let wait = backoff_remaining(b.failures, b.last, now);
            if !wait.is_zero() {
                return Ok(Some(wait));
            }
        }
        wanted_indexes.truncate(BURST);
        let pods = wanted_indexes
            .iter()
            .map(|i| pod_for(job, (*i >= 0).then_some(*i)))
            .collect();
        crate::owned::create_pods(
            &self.client,
            &self.events,
            &self.expectations,
            job,
            key,
            pods,
        )
        .await?;
        Ok(None)
    }
}
