//! Jobs and CronJobs with kubectl, the test playing the kubelet (`exit:<code>` images end at once): a
//! Job fails after exactly `backoffLimit` retries spaced by the backoff, an Indexed Job completes every
//! index, a pod-failure-policy rule fails a Job at once, `activeDeadlineSeconds` stops a running one,
//! `ttlSecondsAfterFinished` removes a finished one, and a `*/1` CronJob starts a Job on schedule and,
//! with `Forbid`, no second one while the first runs.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster};
use serde_json::{Value, json};

use crate::fake_kubelet;
use crate::{Env, eventually};

const WAIT: Duration = Duration::from_secs(90);

fn get(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn job(name: &str, image: &str, spec: Value) -> Value {
    let mut s = json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image}]}}});
    for (k, v) in spec.as_object().cloned().unwrap_or_default() {
        s[k] = v;
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": s})
}

fn condition(job: &Value, type_: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .cloned()
}

fn pods_of(c: &Cluster, job: &str) -> Result<Vec<Value>> {
    let list = get(
        c,
        &[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ],
    )?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

async fn jobs(env: Env) -> Result<()> {
    let c = &env.c;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    // Every run fails: the Job fails after the first pod and exactly two retries.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &job("fails", "exit:1", json!({"backoffLimit": 2})).to_string(),
    )?;
    // Indexed: three completions, two at a time.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &job(
            "indexed",
            "exit:0",
            json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2}),
        )
        .to_string(),
    )?;
    // Exit code 42 is fatal by policy.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &job(
            "policy",
            "exit:42",
            json!({"backoffLimit": 6, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}),
        )
        .to_string(),
    )?;
    // Runs forever, but only for two seconds.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &job("deadline", "busybox", json!({"activeDeadlineSeconds": 2})).to_string(),
    )?;
    // Gone a second after it completes.
    c.kubectl_in(
        &["apply", "-f", "-"],
        &job("brief", "exit:0", json!({"ttlSecondsAfterFinished": 1})).to_string(),
    )?;

    c.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=60s",
    ])?;
    let j = get(c, &["get", "job", "indexed"])?;
    ensure!(
        j["status"]["succeeded"] == 3 && j["status"]["completedIndexes"] == "0-2",
        "{}",
        j["status"]
    );
    ensure!(
        condition(&j, "SuccessCriteriaMet").is_some() && j["status"]["completionTime"].is_string(),
        "{}",
        j["status"]
    );
    let mut indexes: Vec<String> = pods_of(c, "indexed")?
        .iter()
        .map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    indexes.sort();
    ensure!(indexes == ["0", "1", "2"], "{indexes:?}");
    let p0 = pods_of(c, "indexed")?
        .into_iter()
        .find(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
        .context("pod 0")?;
    ensure!(
        p0["spec"]["hostname"] == "indexed-0"
            && p0["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("indexed-0-")),
        "{}",
        p0["metadata"]
    );
    ensure!(
        p0["spec"]["containers"][0]["env"]
            .to_string()
            .contains("JOB_COMPLETION_INDEX"),
        "{}",
        p0["spec"]
    );
    ensure!(
        p0["metadata"]["finalizers"].is_null(),
        "tracking finalizer left: {}",
        p0["metadata"]
    );

    eventually("policy job failed", WAIT, || {
        Ok(condition(&get(c, &["get", "job", "policy"])?, "Failed").is_some())
    })
    .await?;
    let j = get(c, &["get", "job", "policy"])?;
    let f = condition(&j, "Failed").unwrap_or_default();
    ensure!(f["reason"] == "PodFailurePolicy", "{f}");
    ensure!(
        f["message"].as_str().is_some_and(
            |m| m.contains("failed with exit code 42 matching FailJob rule at index 0")
        ),
        "{f}"
    );
    ensure!(pods_of(c, "policy")?.len() == 1, "retried despite FailJob");

    eventually("deadline job failed", WAIT, || {
        Ok(condition(&get(c, &["get", "job", "deadline"])?, "Failed").is_some())
    })
    .await?;
    let f = condition(&get(c, &["get", "job", "deadline"])?, "Failed").unwrap_or_default();
    ensure!(
        f["reason"] == "DeadlineExceeded"
            && f["message"] == "Job was active longer than specified deadline",
        "{f}"
    );
    eventually("deadline pods stopped", WAIT, || {
        Ok(pods_of(c, "deadline")?.iter().all(|p| {
            p["metadata"]["deletionTimestamp"].is_string() || p["status"]["phase"] != "Running"
        }))
    })
    .await?;

    eventually("brief job deleted after its TTL", WAIT, || {
        Ok(
            c.kubectl(&["get", "job", "brief", "--ignore-not-found", "-o", "name"])?
                .trim()
                .is_empty(),
        )
    })
    .await?;

    if let Err(err) = c.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ]) {
        let j = get(c, &["get", "job", "fails"])?;
        let pods: Vec<Value> = pods_of(c, "fails")?
            .iter()
            .map(|p| {
                json!([
                    p["metadata"]["name"],
                    p["metadata"]["creationTimestamp"],
                    p["metadata"]["finalizers"],
                    p["status"]["phase"]
                ])
            })
            .collect();
        anyhow::bail!(
            "{err:#}\njob status: {}\npods: {pods:?}\ncontroller-manager:\n{}",
            j["status"],
            env.cm.log_tail(40)
        );
    }
    let j = get(c, &["get", "job", "fails"])?;
    let f = condition(&j, "Failed").unwrap_or_default();
    ensure!(
        f["reason"] == "BackoffLimitExceeded"
            && f["message"] == "Job has reached the specified backoff limit",
        "{f}"
    );
    ensure!(j["status"]["failed"] == 3, "{}", j["status"]);
    let mut created: Vec<k8s_openapi::jiff::Timestamp> = pods_of(c, "fails")?
        .iter()
        .filter_map(|p| p["metadata"]["creationTimestamp"].as_str()?.parse().ok())
        .collect();
    created.sort();
    ensure!(created.len() == 3, "{created:?}");
    // The second retry waits twice as long as the first (10 s, then 20 s; creation times have second
    // precision).
    let gaps: Vec<i64> = created
        .windows(2)
        .map(|w| w[1].as_second() - w[0].as_second())
        .collect();
    ensure!(
        (9..=14).contains(&gaps[0]) && (19..=25).contains(&gaps[1]),
        "retries not backed off: {gaps:?}"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fails",
        "-o",
        "json",
    ])?;
    ensure!(
        events.contains("BackoffLimitExceeded") && events.contains("SuccessfulCreate"),
        "{events}"
    );
    Ok(())
}

#[test]
fn job_controller() {
    crate::run(Backend::Sqlite, jobs);
}

async fn cron(env: Env) -> Result<()> {
    let c = &env.c;
    let _kubelet = fake_kubelet::spawn(&c.kubeconfig()).await?;
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "*/1 * * * *", "concurrencyPolicy": "Forbid",
                 "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "main", "image": "busybox"}]}}}}}});
    c.kubectl_in(&["apply", "-f", "-"], &cj.to_string())?;
    // The first minute boundary starts a Job (its pod runs on and on).
    eventually("a job on schedule", Duration::from_secs(75), || {
        let list = get(c, &["get", "jobs"])?;
        Ok(list["items"].as_array().is_some_and(|l| l.len() == 1))
    })
    .await?;
    let list = get(c, &["get", "jobs"])?;
    let first = &list["items"][0];
    let name = first["metadata"]["name"].as_str().unwrap_or("").to_string();
    let minutes: i64 = name
        .trim_start_matches("tick-")
        .parse()
        .context("job name carries the scheduled minute")?;
    let scheduled =
        first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap_or("");
    let scheduled: k8s_openapi::jiff::Timestamp = scheduled
        .parse()
        .context("scheduled-timestamp annotation")?;
    ensure!(
        scheduled.as_second() == minutes * 60,
        "{name} vs {scheduled}"
    );
    ensure!(
        first["metadata"]["ownerReferences"][0]["kind"] == "CronJob",
        "{}",
        first["metadata"]
    );
    let cj = get(c, &["get", "cronjob", "tick"])?;
    ensure!(
        cj["status"]["active"]
            .as_array()
            .is_some_and(|a| a.len() == 1),
        "{}",
        cj["status"]
    );
    ensure!(
        cj["status"]["lastScheduleTime"].is_string(),
        "{}",
        cj["status"]
    );

    // The next minute comes and goes: Forbid holds the second run back while the first runs.
    let next = (minutes + 1) * 60;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        if now >= next + 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list = get(c, &["get", "jobs"])?;
    ensure!(
        list["items"].as_array().map_or(0, Vec::len) == 1,
        "Forbid ran a second job: {list}"
    );
    let events = c.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=tick",
        "-o",
        "json",
    ])?;
    ensure!(
        events.contains("JobAlreadyActive") && events.contains(&format!("Created job {name}")),
        "{events}"
    );
    Ok(())
}

#[test]
fn cronjob_controller() {
    crate::run(Backend::Sqlite, cron);
}
