//! Background work of a store: following other kine processes' commits (PostgreSQL LISTEN/NOTIFY, MySQL
//! short polling), compaction (periodic and physical, in bounded windows with progress logs), lease expiry,
//! the member heartbeat and the space quota.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Op, OpResult, Store};
use crate::db::Dialect;
use crate::error::EtcdError;
use crate::pb::alarm_type;

/// MySQL has no notifications: poll the revision this often.
const MYSQL_POLL: Duration = Duration::from_millis(50);
/// PostgreSQL: also poll this often, in case a notification was lost with its connection.
const PG_POLL: Duration = Duration::from_secs(1);
const HEARTBEAT: Duration = Duration::from_secs(5);
const QUOTA_CHECK: Duration = Duration::from_secs(2);

pub fn spawn_all(store: &Arc<Store>) {
    if store.db.dialect.shared() {
        tokio::spawn(tail_loop(store.clone()));
        tokio::spawn(heartbeat_loop(store.clone()));
    }
    tokio::spawn(compact_loop(store.clone()));
    tokio::spawn(super::lease::expiry_loop(store.clone()));
    tokio::spawn(quota_loop(store.clone()));
}

impl Store {
    /// Applies every revision other processes committed since ours.
    pub(crate) async fn catch_up(&self) -> Result<(), EtcdError> {
        let meta = self.db.meta().await?;
        if meta.compact_rev > self.compact_rev() {
            self.note_compacted(meta.compact_rev);
        }
        if meta.rev <= self.rev() {
            return Ok(());
        }
        let _apply = self.apply_lock.lock().await;
        let mut stalls = 0;
        loop {
            let applied = self.rev();
            if applied >= meta.rev {
                return Ok(());
            }
            let upto = (applied + 2000).min(meta.rev);
            let rows = self.db.rows_between(applied, upto).await?;
            if !rows.is_empty() && self.apply_rows(&rows).is_ok() && self.rev() > applied {
                continue;
            }
            // Rows are missing: compacted away (rebuild) or not yet visible to this connection (wait).
            let now = self.db.meta().await?;
            if now.compact_done > applied || stalls >= 200 {
                return self.resync().await;
            }
            stalls += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn tail_loop(store: Arc<Store>) {
    let mut listener = match (store.db.dialect, store.db.pg_url()) {
        (Dialect::Postgres, Some(url)) => match sqlx::postgres::PgListener::connect(url).await {
            Ok(mut l) => match l.listen("kine").await {
                Ok(()) => Some(l),
                Err(err) => {
                    tracing::warn!(%err, "LISTEN kine failed; falling back to polling");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(%err, "cannot open a LISTEN connection; falling back to polling");
                None
            }
        },
        _ => None,
    };
    let period = if listener.is_some() {
        PG_POLL
    } else {
        MYSQL_POLL
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = store.shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = store.tail_kick.notified() => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match n {
                    // A revision committed elsewhere; skip if we already have it (our own commits notify too).
                    Ok(Some(n)) if n.payload().parse::<i64>().is_ok_and(|rev| rev <= store.rev()) => continue,
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "notification connection failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        if let Err(err) = store.catch_up().await {
            tracing::warn!(%err, "following the database failed");
        }
    }
}

async fn heartbeat_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = store.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = store
            .db
            .member_upsert(&store.member, crate::util::now_ms())
            .await
        {
            tracing::warn!(%err, "member heartbeat failed");
        }
    }
}

async fn compact_loop(store: Arc<Store>) {
    let interval = store.config.compact_interval;
    let mut tick = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Finish a physical compaction an earlier run left half done.
    store.compact_physical().await;
    loop {
        tokio::select! {
            _ = store.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if interval.is_none() {
                    continue;
                }
                let target = store.rev() - store.config.compact_min_retain;
                if target > store.compact_rev() {
                    match store.submit(Op::Compact { rev: target }).await {
                        Ok(_) => tracing::info!(revision = target, "compacted history"),
                        Err(EtcdError::Compacted) | Err(EtcdError::FutureRev) => {}
                        Err(err) => tracing::warn!(%err, "periodic compaction failed"),
                    }
                }
            }
            _ = store.compact_kick.notified() => {}
        }
        store.compact_physical().await;
    }
}

impl Store {
    /// Deletes compacted history window by window, logging progress.
    async fn compact_physical(&self) {
        let meta = match self.db.meta().await {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(%err, "reading compaction progress");
                return;
            }
        };
        let (mut done, target) = (meta.compact_done, meta.compact_rev);
        self.compact_done.send_replace(done);
        if done >= target {
            return;
        }
        let started = Instant::now();
        let mut last_report = Instant::now();
        let mut deleted_total = 0;
        let from = done;
        while done < target && !self.shutdown.is_cancelled() {
            let upto = (done + self.config.compact_batch_size.max(1)).min(target);
            match self.submit(Op::CompactWindow { after: done, upto }).await {
                Ok(OpResult::CompactWindow { deleted }) => deleted_total += deleted,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, done, target, "physical compaction stopped; will resume");
                    return;
                }
            }
            done = upto;
            if last_report.elapsed() >= Duration::from_secs(5) {
                tracing::info!(
                    done,
                    target,
                    percent = (done - from) * 100 / (target - from).max(1),
                    "compacting history"
                );
                last_report = Instant::now();
            }
        }
        tracing::info!(
            from,
            to = done,
            deleted_rows = deleted_total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "physical compaction finished"
        );
    }
}

async fn quota_loop(store: Arc<Store>) {
    let mut tick = tokio::time::interval(QUOTA_CHECK);
    loop {
        tokio::select! {
            _ = store.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let size = store.db.size().await;
        store.note_db(size.as_ref().map(|_| ()));
        match size {
            Ok((size, _)) => {
                store.metrics.db_size_bytes.set(size);
                let quota = store.config.quota_backend_bytes;
                if quota > 0 && size as u64 > quota && !store.nospace() {
                    tracing::warn!(
                        size,
                        quota,
                        "database space exceeded; raising the NOSPACE alarm (writes refused)"
                    );
                    if let Err(err) = store
                        .db
                        .alarm_set(store.member.id, alarm_type::NOSPACE, true)
                        .await
                    {
                        tracing::warn!(%err, "raising NOSPACE alarm");
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "measuring the database"),
        }
        if let Err(err) = store.refresh_alarms().await {
            tracing::warn!(%err, "reading alarms");
        }
    }
}
