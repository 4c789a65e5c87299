//! Health, readiness and metrics: /healthz and /readyz answer 200 once the scheduler leads with its caches
//! synced; with no node at all a pod is refused with upstream's `no nodes available to schedule pods` and
//! is placed once a node appears (with the `Scheduled` event); /metrics then counts the attempts by
//! result, the pending pods by queue, and the attempt durations.

use anyhow::{Result, ensure};

use crate::{Env, WAIT, http_get, metric_sum, node, pod, until};

async fn check_health(mut env: Env) -> Result<()> {
    env.start(&[]).await?;
    let port = env.health_port;
    for path in ["/healthz", "/readyz"] {
        let (code, body) = http_get(port, path)?;
        ensure!(code == 200, "{path} answered {code}: {body}");
    }

    env.create_pod(&pod("early")).await?;
    env.unschedulable_exact("early", "no nodes available to schedule pods")
        .await?;
    env.create_node(&node("h1", "2", "4Gi")).await?;
    env.expect_bound("early", "h1").await?;
    let e = &env;
    until("the Scheduled event", WAIT, || async move {
        let events = e.events_for("default", "early").await?;
        Ok(events
            .iter()
            .any(|ev| {
                ev.type_ == "Normal"
                    && ev.reason == "Scheduled"
                    && ev.message == "Successfully assigned default/early to h1"
            })
            .then_some(()))
    })
    .await?;

    let profile = r#"profile="default-scheduler""#;
    let text = until("the attempts counted", WAIT, || async move {
        let (code, text) = http_get(port, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        let scheduled = metric_sum(
            &text,
            "scheduler_schedule_attempts_total",
            &[profile, r#"result="scheduled""#],
        );
        let refused = metric_sum(
            &text,
            "scheduler_schedule_attempts_total",
            &[profile, r#"result="unschedulable""#],
        );
        Ok((scheduled >= Some(1.0) && refused >= Some(1.0)).then_some(text))
    })
    .await?;
    for queue in ["active", "backoff", "unschedulable", "gated"] {
        let label = format!(r#"queue="{queue}""#);
        ensure!(
            metric_sum(&text, "scheduler_pending_pods", &[label.as_str()]).is_some(),
            "no scheduler_pending_pods{{{label}}} in:\n{text}"
        );
    }
    // One attempt refused (no node), one placed.
    let attempts = metric_sum(
        &text,
        "scheduler_scheduling_attempt_duration_seconds_count",
        &[],
    );
    ensure!(
        attempts >= Some(2.0)
            && text.contains("scheduler_scheduling_attempt_duration_seconds_bucket"),
        "scheduler_scheduling_attempt_duration_seconds: {attempts:?} in:\n{text}"
    );
    Ok(())
}

#[test]
fn health_and_metrics() {
    crate::run(check_health);
}
