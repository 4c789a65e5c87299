//! The single writer: drains queued write operations into one database transaction (group commit), holding
//! the revision lock, evaluates them in order against the index plus the batch's staged changes, commits,
//! then applies the rows to the index and answers every caller. One fsync serves the whole batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Store;
use crate::db::{LeaseRec, Meta, WriteTx};
use crate::error::EtcdError;
use crate::pb::TxnRequest;
use crate::state::State;
use crate::txn::{self, Batch, LeaseOp, OpCtx, Pending};

/// Jobs per batch.
const MAX_BATCH: usize = 256;
/// Attempts for a batch that failed on a retriable database error.
const MAX_ATTEMPTS: u32 = 8;
/// etcd's largest lease TTL (`MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's smallest lease TTL with default heartbeat and election settings.
pub const MIN_LEASE_TTL: i64 = 2;

/// A write operation.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put, DeleteRange and Txn all run as txns.
    Txn(TxnRequest),
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revoke a lease and delete its keys; `only_if_expired` for the expiry loop (a no-op if it was renewed).
    LeaseRevoke {
        id: i64,
        only_if_expired: bool,
    },
    LeaseKeepAlive {
        id: i64,
    },
    /// Logical compaction: reads below `rev` fail from now on.
    Compact {
        rev: i64,
    },
    /// Physical compaction of one window of history (runs alone).
    CompactWindow {
        after: i64,
        upto: i64,
    },
}

impl Op {
    fn runs_alone(&self) -> bool {
        matches!(self, Op::CompactWindow { .. })
    }

    /// A txn reading an explicit revision must start its batch, so that revision is committed already.
    fn needs_fresh_batch(&self) -> bool {
        matches!(self, Op::Txn(t) if txn::has_revision_range(t))
    }

    fn adds_data(&self) -> bool {
        match self {
            Op::Txn(t) => txn::has_put(t),
            Op::LeaseGrant { .. } => true,
            _ => false,
        }
    }
}

/// What a write operation produced. `rev` is the store revision after it.
#[derive(Debug)]
pub enum OpResult {
    Txn {
        resp: crate::pb::TxnResponse,
        rev: i64,
        /// History ranges inside the txn, answered by the caller.
        pending: Vec<Pending>,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
        rev: i64,
    },
    LeaseRevoke {
        rev: i64,
    },
    /// `ttl` 0 when the lease does not exist.
    LeaseKeepAlive {
        ttl: i64,
        rev: i64,
    },
    Compact {
        rev: i64,
    },
    CompactWindow {
        deleted: u64,
    },
}

pub struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<Result<OpResult, EtcdError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("op", &self.op).finish()
    }
}

pub async fn run(store: Arc<Store>, mut rx: mpsc::Receiver<Job>) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(job) => job,
            None => tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                _ = store.shutdown.cancelled() => break,
            },
        };
        let mut jobs = vec![first];
        if !jobs[0].op.runs_alone() {
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) if job.op.runs_alone() || job.op.needs_fresh_batch() => {
                        carry = Some(job);
                        break;
                    }
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        store.run_batch(jobs).await;
    }
    // Shutting down: refuse what is still queued.
    rx.close();
    while let Ok(job) = rx.try_recv() {
        let _ = job.reply.send(Err(EtcdError::Stopped));
    }
}

impl Store {
    async fn run_batch(&self, jobs: Vec<Job>) {
        let _apply = self.apply_lock.lock().await;
        let started = Instant::now();
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.try_batch(&jobs).await {
                Err(err) if err.retriable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(%err, attempt, "write batch conflicted, retrying");
                    tokio::time::sleep(Duration::from_millis(2 << attempt.min(7))).await;
                }
                other => break other,
            }
        };
        self.metrics.batch_jobs.observe(jobs.len() as f64);
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.note_db(outcome.as_ref().map(|_| ()));
        match outcome {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => {
                tracing::warn!(%err, jobs = jobs.len(), "write batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// One attempt at a batch: everything or nothing is committed.
    async fn try_batch(&self, jobs: &[Job]) -> Result<Vec<Result<OpResult, EtcdError>>, EtcdError> {
        let (mut tx, meta) = self.db.begin_write().await?;
        match self.catch_up_locked(&mut tx, &meta).await {
            Ok(true) => {}
            Ok(false) => {
                // Some revisions we lack were compacted away: rebuild (which takes the revision lock
                // itself, so ours goes first), then the batch is retried.
                tx.rollback().await;
                self.resync().await?;
                return Err(EtcdError::Storage {
                    message: "index rebuilt after falling behind a compaction".into(),
                    retriable: true,
                });
            }
            Err(err) => {
                tx.rollback().await;
                return Err(err);
            }
        }
        if let [
            Job {
                op: Op::CompactWindow { after, upto },
                ..
            },
        ] = jobs
        {
            return self.compact_window(tx, &meta, *after, *upto).await;
        }

        let mut batch = Batch::new(meta.rev, meta.compact_rev, crate::util::now_ms());
        batch.leases = prefetch_leases(&mut tx, jobs).await?;
        let results: Vec<_> = {
            let st = self.state.read();
            jobs.iter()
                .map(|job| self.eval(&st, &mut batch, &job.op))
                .collect()
        };
        let compacted = batch.compact_rev > meta.compact_rev;
        write_staged(&mut tx, &batch, compacted).await?;
        tx.commit().await?;

        if !batch.rows.is_empty() && self.apply_rows(&batch.rows).is_err() {
            // Cannot happen: the rows continue the revision we applied under the lock.
            tracing::error!("committed rows did not continue the index; rebuilding it");
            self.resync().await?;
        }
        if compacted {
            self.note_compacted(batch.compact_rev);
            self.compact_kick.notify_one();
        }
        Ok(results)
    }

    /// Under the revision lock: applies what other kine processes committed since we last looked, so the
    /// batch is evaluated against the newest state. `false` when the index must be rebuilt first.
    async fn catch_up_locked(&self, tx: &mut WriteTx, meta: &Meta) -> Result<bool, EtcdError> {
        let applied = self.rev();
        if meta.rev > applied {
            let rows = tx.rows_between(applied, meta.rev).await?;
            if self.apply_rows(&rows).is_err() || self.rev() != meta.rev {
                return Ok(false);
            }
        } else if meta.rev < applied {
            return Err(EtcdError::storage(format!(
                "database revision {} is behind this process's revision {applied}: was the database restored \
                 under a running kine? restart kine",
                meta.rev
            )));
        }
        if meta.compact_rev > self.compact_rev() {
            self.note_compacted(meta.compact_rev);
        }
        Ok(true)
    }

    /// Physically compacts one window (another process may have done part of it already).
    async fn compact_window(
        &self,
        mut tx: WriteTx,
        meta: &Meta,
        after: i64,
        upto: i64,
    ) -> Result<Vec<Result<OpResult, EtcdError>>, EtcdError> {
        let after = after.max(meta.compact_done);
        let upto = upto.min(meta.compact_rev);
        let mut deleted = 0;
        if after < upto {
            deleted = tx.compact_window(after, upto).await?;
            tx.set_meta("compact_done", upto).await?;
        }
        tx.commit().await?;
        self.compact_done.send_replace(upto.max(meta.compact_done));
        self.metrics.compacted_rows.inc_by(deleted);
        Ok(vec![Ok(OpResult::CompactWindow { deleted })])
    }

    /// Evaluates one operation into the batch. Errors reject that operation only.
    fn eval(&self, st: &State, batch: &mut Batch, op: &Op) -> Result<OpResult, EtcdError> {
        if op.adds_data() && self.nospace() {
            return Err(EtcdError::NoSpace);
        }
        match op {
            Op::Txn(req) => {
                let path = txn::compare_path(st, batch, req);
                txn::check_requests(st, batch, req, &path)?;
                let mut ctx = OpCtx::new(batch);
                let (resp, _) = txn::exec_txn(st, batch, req, &path, &mut ctx, &mut Vec::new());
                if ctx.wrote {
                    batch.rev = ctx.new_rev;
                }
                Ok(OpResult::Txn {
                    resp,
                    rev: batch.rev,
                    pending: ctx.pending,
                })
            }
            Op::LeaseGrant { id, ttl } => {
                if *ttl > MAX_LEASE_TTL {
                    return Err(EtcdError::LeaseTtlTooLarge);
                }
                if matches!(batch.leases.get(id), Some(Some(_))) {
                    return Err(EtcdError::LeaseExist);
                }
                let ttl = (*ttl).max(MIN_LEASE_TTL);
                let rec = LeaseRec {
                    id: *id,
                    ttl,
                    expiry: batch.now_ms + ttl * 1000,
                };
                batch.leases.insert(*id, Some(rec));
                batch.lease_ops.push(LeaseOp::Insert(rec));
                Ok(OpResult::LeaseGrant {
                    id: *id,
                    ttl,
                    rev: batch.rev,
                })
            }
            Op::LeaseRevoke {
                id,
                only_if_expired,
            } => {
                let Some(Some(rec)) = batch.leases.get(id).copied() else {
                    return Err(EtcdError::LeaseNotFound);
                };
                if *only_if_expired && rec.expiry > batch.now_ms {
                    return Ok(OpResult::LeaseRevoke { rev: batch.rev });
                }
                let keys = batch.lease_keys(st, *id);
                if !keys.is_empty() {
                    let rev = batch.rev + 1;
                    let mut sub = 0;
                    for key in &keys {
                        batch.stage_delete(st, key, rev, &mut sub);
                    }
                    batch.rev = rev;
                }
                batch.leases.insert(*id, None);
                batch.lease_ops.push(LeaseOp::Delete(*id));
                Ok(OpResult::LeaseRevoke { rev: batch.rev })
            }
            Op::LeaseKeepAlive { id } => match batch.leases.get(id).copied().flatten() {
                Some(mut rec) => {
                    rec.expiry = batch.now_ms + rec.ttl * 1000;
                    batch.leases.insert(*id, Some(rec));
                    batch.lease_ops.push(LeaseOp::Touch {
                        id: *id,
                        expiry: rec.expiry,
                    });
                    Ok(OpResult::LeaseKeepAlive {
                        ttl: rec.ttl,
                        rev: batch.rev,
                    })
                }
                None => Ok(OpResult::LeaseKeepAlive {
                    ttl: 0,
                    rev: batch.rev,
                }),
            },
            Op::Compact { rev } => {
                if *rev > batch.rev {
                    return Err(EtcdError::FutureRev);
                }
                if *rev <= batch.compact_rev {
                    return Err(EtcdError::Compacted);
                }
                batch.compact_rev = *rev;
                Ok(OpResult::Compact { rev: batch.rev })
            }
            // Handled before evaluation (it runs alone).
            Op::CompactWindow { .. } => Ok(OpResult::CompactWindow { deleted: 0 }),
        }
    }
}

/// Reads every lease the batch's operations name (absent ones as `None`).
async fn prefetch_leases(
    tx: &mut WriteTx,
    jobs: &[Job],
) -> Result<HashMap<i64, Option<LeaseRec>>, EtcdError> {
    let mut ids = Vec::new();
    for job in jobs {
        match &job.op {
            Op::Txn(t) => txn::lease_ids(t, &mut ids),
            Op::LeaseGrant { id, .. } | Op::LeaseRevoke { id, .. } | Op::LeaseKeepAlive { id } => {
                ids.push(*id)
            }
            _ => {}
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut leases: HashMap<i64, Option<LeaseRec>> = ids.iter().map(|id| (*id, None)).collect();
    for rec in tx.leases(&ids).await? {
        leases.insert(rec.id, Some(rec));
    }
    Ok(leases)
}

/// Writes the batch's staged rows, revision, lease changes and compaction revision.
async fn write_staged(tx: &mut WriteTx, batch: &Batch, compacted: bool) -> Result<(), EtcdError> {
    if !batch.rows.is_empty() {
        tx.insert_rows(&batch.rows).await?;
        tx.set_meta("revision", batch.rev).await?;
    }
    for op in &batch.lease_ops {
        match *op {
            LeaseOp::Insert(rec) => tx.lease_insert(rec).await?,
            LeaseOp::Touch { id, expiry } => tx.lease_touch(id, expiry).await?,
            LeaseOp::Delete(id) => tx.lease_delete(id).await?,
        }
    }
    if compacted {
        tx.set_meta("compact_revision", batch.compact_rev).await?;
    }
    if !batch.rows.is_empty() || compacted {
        tx.notify(batch.rev).await?;
    }
    Ok(())
}
