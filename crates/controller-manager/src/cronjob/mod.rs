//! The CronJob controller (upstream's v2): at each scheduled time (in `timeZone`, UTC by default) a Job
//! named `<cronjob>-<minutes since the epoch>` from the template, unless suspended, too late for
//! `startingDeadlineSeconds`, or held back by `concurrencyPolicy` (`Forbid` skips while one runs,
//! `Replace` deletes the running ones first); `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` kept, finished Jobs beyond the history limits deleted.

pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, PropagationPolicy};
use kube::{Error as KubeError, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::events::Recorder;
use crate::informers::{Informer, controller_of, key_of, split_key};
use crate::queue::{Outcome, Queue, run_workers};
use schedule::Schedule;

const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct Controller {
    client: kube::Client,
    cronjobs: Informer<CronJob>,
    jobs: Informer<Job>,
    events: Recorder,
}

pub fn start(ctx: &Ctx, shutdown: &CancellationToken) -> JoinSet<()> {
    let cronjobs: Informer<CronJob> = ctx.informers.get();
    let jobs: Informer<Job> = ctx.informers.get();
    let queue: Queue<String> = Queue::new();
    let q = queue.clone();
    cronjobs.on_change(move |c| q.add(key_of(c)));
    let q = queue.clone();
    jobs.on_change(move |j| {
        if let Some((cj, _)) = controller_of(j, "CronJob") {
            q.add(format!("{}/{cj}", j.namespace().unwrap_or_default()));
        }
    });
    let c = Arc::new(Controller {
        client: ctx.client.clone(),
        cronjobs,
        jobs,
        events: Recorder::new(ctx.client.clone(), "cronjob-controller"),
    });
    run_workers("cronjob", queue, 5, shutdown.clone(), move |key: String| {
        let c = c.clone();
        async move { c.sync(&key).await }
    })
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.namespace(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Complete or Failed, and which.
fn finished_as(job: &Job) -> Option<&'static str> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for (t, name) in [("Complete", "Complete"), ("Failed", "Failed")] {
        if conds.iter().any(|c| c.type_ == t && c.status == "True") {
            return Some(name);
        }
    }
    None
}

impl Controller {
    async fn sync(&self, key: &str) -> Outcome {
        self.cronjobs.synced().await;
        self.jobs.synced().await;
        let (Some(ns), name) = split_key(key) else {
            return Ok(None);
        };
        let Some(cj) = self.cronjobs.get(Some(ns), name) else {
            return Ok(None);
        };
        let mut cj = (*cj).clone();
        let uid = cj.uid().unwrap_or_default();
        let children: Vec<Arc<Job>> = self
            .jobs
            .list_in(ns)
            .into_iter()
            .filter(|j| controller_of(j.as_ref(), "CronJob").is_some_and(|(_, u)| u == uid))
            .collect();
        let mut status = cj.status.clone().unwrap_or_default();
        let before = status.clone();
        // Active list: finished and vanished Jobs leave it.
        let mut active: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        active.retain(|r| {
            let child = children.iter().find(|j| j.metadata.uid == r.uid);
            match child {
                None => {
                    self.events.normal(
                        &cj,
                        "MissingJob",
                        format!(
                            "Active job went missing: {}",
                            r.name.clone().unwrap_or_default()
                        ),
                    );
                    false
                }
                Some(j) => match finished_as(j) {
                    Some(how) => {
                        self.events.normal(
                            &cj,
                            "SawCompletedJob",
                            format!("Saw completed job: {}, condition: {how}", j.name_any()),
                        );
                        false
                    }
                    None => true,
                },
            }
        });
        // Running children not listed (e.g. after a lost status write) are listed.
        for j in &children {
            if finished_as(j).is_none() && !active.iter().any(|r| r.uid == j.metadata.uid) {
                active.push(job_ref(j));
            }
        }
        for j in &children {
            if finished_as(j) == Some("Complete")
                && let Some(t) = j.status.as_ref().and_then(|s| s.completion_time.clone())
                && status
                    .last_successful_time
                    .as_ref()
                    .is_none_or(|l| l.0 < t.0)
            {
                status.last_successful_time = Some(t);
            }
        }
        status.active = (!active.is_empty()).then_some(active.clone());
        let result = self.schedule(&cj, &mut status, &children).await;
        if status != before {
            cj.status = Some(status);
            cj.metadata.managed_fields = None;
            let api: Api<CronJob> = Api::namespaced(self.client.clone(), ns);
            match api.replace_status(name, &PostParams::default(), &cj).await {
                Ok(_) | Err(KubeError::Api(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        self.cleanup(&cj, &children).await?;
        result
    }

    /// Starts the Job due now, if any; returns when to look again.
    async fn schedule(
        &self,
        cj: &CronJob,
        status: &mut k8s_openapi::api::batch::v1::CronJobStatus,
        children: &[Arc<Job>],
    ) -> Outcome {
        let spec = cj.spec.clone().unwrap_or_default();
        if cj.metadata.deletion_timestamp.is_some() || spec.suspend.unwrap_or(false) {
            return Ok(None);
        }
        let tz = match spec.time_zone.as_deref() {
            None | Some("") => TimeZone::UTC,
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => tz,
                Err(_) => {
                    self.events.warning(
                        cj,
                        "UnknownTimeZone",
                        format!("invalid timeZone: {name:?}: unknown time zone {name}"),
                    );
                    return Ok(None);
                }
            },
        };
        let sched = match Schedule::parse(&spec.schedule) {
            Ok(s) => s,
            Err(err) => {
                self.events.warning(
                    cj,
                    "UnparseableSchedule",
                    format!("unparseable schedule: {:?} : {err}", spec.schedule),
                );
                return Ok(None);
            }
        };
        let now = Timestamp::now();
        let earliest = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        // Schedules missed longer ago than the deadline are not looked at.
        let earliest = match spec.starting_deadline_seconds {
            Some(d) => earliest.max(
                now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(d))
                    .unwrap_or(earliest),
            ),
            None => earliest,
        };
        let next_after = |t: Timestamp| {
            sched.next(t, &tz).map(|n| {
                Duration::from_millis(
                    (n.as_millisecond() - Timestamp::now().as_millisecond()).max(0) as u64 + 100,
                )
            })
        };
        let (scheduled, missed) = sched.most_recent(earliest, now, &tz);
        let Some(scheduled) = scheduled else {
            return Ok(next_after(now));
        };
        if missed > 100 {
            self.events.warning(cj, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into());
        }
        if let Some(d) = spec.starting_deadline_seconds
            && scheduled.as_second() + d < now.as_second()
        {
            self.events.normal(
                cj,
                "MissSchedule",
                format!("Missed scheduled time to start a job: {scheduled}"),
            );
            return Ok(next_after(now));
        }
        let job_name = format!("{}-{}", cj.name_any(), scheduled.as_second() / 60);
        if children
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(job_name.as_str()))
        {
            return Ok(next_after(now));
        }
        let ns = cj.namespace().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let running: Vec<ObjectReference> = status.active.clone().unwrap_or_default();
        match spec.concurrency_policy.as_deref() {
            Some("Forbid") if !running.is_empty() => {
                self.events.normal(cj, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid".into());
                return Ok(next_after(now));
            }
            Some("Replace") => {
                for r in &running {
                    let name = r.name.clone().unwrap_or_default();
                    let dp = DeleteParams {
                        propagation_policy: Some(PropagationPolicy::Background),
                        ..Default::default()
                    };
                    match jobs.delete(&name, &dp).await {
                        Ok(_) => self.events.normal(
                            cj,
                            "SuccessfulDelete",
                            format!("Deleted job {name}"),
                        ),
                        Err(KubeError::Api(s)) if s.code == 404 => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                status.active = None;
            }
            _ => {}
        }
        let template = spec.job_template.clone();
        let meta = template.metadata.clone().unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert(
            SCHEDULED_ANNOTATION.into(),
            scheduled
                .to_zoned(tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
        );
        let job = Job {
            metadata: ObjectMeta {
                name: Some(job_name.clone()),
                namespace: Some(ns.clone()),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: cj.name_any(),
                    uid: cj.uid().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let created = match jobs.create(&PostParams::default(), &job).await {
            Ok(j) => j,
            Err(KubeError::Api(s)) if s.code == 409 => {
                // Made by an earlier sync whose status write was lost.
                match jobs.get_opt(&job_name).await? {
                    Some(j)
                        if controller_of(&j, "CronJob")
                            .is_some_and(|(_, u)| Some(u) == cj.uid()) =>
                    {
                        j
                    }
                    _ => return Err(KubeError::Api(s).into()),
                }
            }
            Err(err) => {
                self.events
                    .warning(cj, "FailedCreate", format!("Error creating job: {err}"));
                return Err(err.into());
            }
        };
        self.events
            .normal(cj, "SuccessfulCreate", format!("Created job {job_name}"));
        status
            .active
            .get_or_insert_with(Vec::new)
            .push(job_ref(&created));
        status.last_schedule_time = Some(Time(scheduled));
        Ok(next_after(now))
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    async fn cleanup(&self, cj: &CronJob, children: &[Arc<Job>]) -> Result<(), crate::Error> {
        let spec = cj.spec.clone().unwrap_or_default();
        let ns = cj.namespace().unwrap_or_default();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        for (how, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<&Arc<Job>> = children
                .iter()
                .filter(|j| finished_as(j) == Some(how) && j.metadata.deletion_timestamp.is_none())
                .collect();
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            if excess == 0 {
                continue;
            }
            done.sort_by_key(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .or(j.metadata.creation_timestamp.as_ref())
                    .map(|t| t.0)
            });
            for j in done.into_iter().take(excess) {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    ..Default::default()
                };
                match jobs.delete(&j.name_any(), &dp).await {
                    Ok(_) => self.events.normal(
                        cj,
                        "SuccessfulDelete",
                        format!("Deleted job {}", j.name_any()),
                    ),
                    Err(KubeError::Api(s)) if s.code == 404 => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(())
    }
}
