//! The store: the database, the in-memory index built from it, the event hub, and the single writer that
//! commits revisions. Every RPC goes through here; background tasks (tailing other processes' writes,
//! compaction, lease expiry, membership, quota) live beside it.

mod background;
mod kv;
mod lease;
mod maint;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::db::{Db, MemberRec};
use crate::error::EtcdError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::pb::ResponseHeader;
use crate::state::{Gap, State};
use crate::types::Row;

pub use maint::ETCD_VERSION;
pub use writer::{Op, OpResult};

/// etcd's raft term, constant here (there is no election).
pub const RAFT_TERM: u64 = 1;

/// Settings the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub compact_interval: Option<Duration>,
    pub compact_min_retain: i64,
    pub compact_batch_size: i64,
    pub quota_backend_bytes: u64,
    pub watch_ring_bytes: usize,
    pub max_request_bytes: usize,
}

#[derive(Debug)]
pub struct Store {
    pub db: Db,
    state: RwLock<State>,
    /// Held by whoever applies rows (the writer during a batch, the tailer, a resync).
    apply_lock: tokio::sync::Mutex<()>,
    pub hub: Hub,
    writer: mpsc::Sender<writer::Job>,
    pub cluster_id: u64,
    pub member: MemberRec,
    pub config: StoreConfig,
    pub metrics: Arc<Metrics>,
    nospace: AtomicBool,
    alarms: Mutex<Vec<(u64, i32)>>,
    /// The last datastore failure, cleared by the next success (for `/healthz`).
    db_error: Mutex<Option<String>>,
    barrier: Barrier,
    tail_kick: Notify,
    compact_kick: Notify,
    compact_done: watch::Sender<i64>,
    pub shutdown: CancellationToken,
}

impl Store {
    /// Opens the store on a connected database: creates the schema, loads the index, restarts lease TTLs,
    /// and starts the writer and background tasks (all stop when `shutdown` is cancelled).
    pub async fn open(
        db: Db,
        config: StoreConfig,
        member: MemberRec,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, EtcdError> {
        db.init(crate::util::random_id()).await?;
        let started = std::time::Instant::now();
        let (state, meta) = load_consistent(&db).await?;
        tracing::info!(
            keys = state.live_keys(),
            revision = meta.rev,
            compact_revision = meta.compact_rev,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded the index"
        );
        db.lease_reset(crate::util::now_ms()).await?;
        db.member_upsert(&member, crate::util::now_ms()).await?;
        let (tx, rx) = mpsc::channel(4096);
        let store = Arc::new(Self {
            hub: Hub::new(state.rev(), config.watch_ring_bytes),
            state: RwLock::new(state),
            apply_lock: tokio::sync::Mutex::new(()),
            writer: tx,
            cluster_id: meta.cluster_id as u64,
            member,
            config,
            metrics,
            nospace: AtomicBool::new(false),
            alarms: Mutex::new(Vec::new()),
            db_error: Mutex::new(None),
            barrier: Barrier::default(),
            tail_kick: Notify::new(),
            compact_kick: Notify::new(),
            compact_done: watch::Sender::new(meta.compact_done),
            shutdown,
            db,
        });
        store.refresh_alarms().await?;
        store.update_gauges();
        if store.db.dialect.shared() {
            // Catch up with writes made between loading and now.
            store.catch_up().await?;
        }
        tokio::spawn(writer::run(store.clone(), rx));
        background::spawn_all(&store);
        Ok(store)
    }

    /// The header etcd puts on every response.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: RAFT_TERM,
        }
    }

    /// The newest revision applied here.
    pub fn rev(&self) -> i64 {
        self.state.read().rev()
    }

    pub fn compact_rev(&self) -> i64 {
        self.state.read().compact_rev()
    }

    /// Read access to the index (keep the guard short; never across an await).
    pub(crate) fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Applies committed rows to the index and publishes their events, in one step so watchers see
    /// revisions in order.
    fn apply_rows(&self, rows: &[Row]) -> Result<(), Gap> {
        let mut st = self.state.write();
        let events = st.apply(rows)?;
        self.hub.publish(events);
        drop(st);
        self.update_gauges();
        Ok(())
    }

    fn update_gauges(&self) {
        let st = self.state.read();
        self.metrics.revision.set(st.rev());
        self.metrics.compact_revision.set(st.compact_rev());
        self.metrics.keys.set(st.live_keys() as i64);
    }

    fn note_compacted(&self, rev: i64) {
        self.state.write().compacted(rev);
        self.update_gauges();
    }

    /// Rebuilds the index from the database (when this process fell behind a compaction). The caller holds
    /// `apply_lock`; the database revision lock is taken so the rows and the revision agree.
    async fn resync(&self) -> Result<(), EtcdError> {
        let (state, meta) = load_consistent(&self.db).await?;
        tracing::warn!(
            revision = meta.rev,
            "index rebuilt from the database (fell behind a compaction)"
        );
        let mut st = self.state.write();
        *st = state;
        self.hub.reset(meta.rev);
        drop(st);
        self.update_gauges();
        Ok(())
    }

    /// Records whether the datastore just answered (`/healthz` reports the last failure).
    pub(crate) fn note_db(&self, result: Result<(), &EtcdError>) {
        *self.db_error.lock() = result.err().map(|e| e.to_string());
    }

    /// Healthy unless stopping or the datastore's last answer was a failure.
    pub fn health(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("stopping".into());
        }
        match &*self.db_error.lock() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    /// Whether writes that add data are refused (the NOSPACE alarm is raised).
    pub fn nospace(&self) -> bool {
        self.nospace.load(Ordering::Relaxed)
    }

    /// The compaction revision as the database has it now (other processes may have compacted).
    pub(crate) async fn compact_rev_now(&self) -> Result<i64, EtcdError> {
        if self.db.dialect.shared() {
            Ok(self.db.meta().await?.compact_rev)
        } else {
            Ok(self.compact_rev())
        }
    }

    /// Makes a linearizable read safe: waits until this process has applied every revision committed
    /// before the call (etcd's ReadIndex). Free on SQLite, where this process is the only writer.
    pub async fn linearize(&self) -> Result<(), EtcdError> {
        if !self.db.dialect.shared() {
            return Ok(());
        }
        let target = self.barrier.committed_rev(&self.db).await?;
        self.wait_applied(target).await
    }

    async fn wait_applied(&self, target: i64) -> Result<(), EtcdError> {
        let mut head = self.hub.subscribe();
        if *head.borrow() >= target {
            return Ok(());
        }
        self.tail_kick.notify_one();
        match tokio::time::timeout(Duration::from_secs(5), head.wait_for(|h| *h >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(EtcdError::Storage {
                message: format!("timed out catching up to revision {target}"),
                retriable: true,
            }),
        }
    }

    /// Sends one operation to the writer and waits for its result.
    pub async fn submit(&self, op: Op) -> Result<OpResult, EtcdError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(writer::Job { op, reply })
            .await
            .map_err(|_| EtcdError::Stopped)?;
        rx.await.map_err(|_| EtcdError::Stopped)?
    }
}

/// Builds the index from the database while holding the revision lock, so the rows and the revision agree
/// even with other kine processes writing.
async fn load_consistent(db: &Db) -> Result<(State, crate::db::Meta), EtcdError> {
    let (tx, meta) = db.begin_write().await?;
    let rows = db.latest_rows().await;
    tx.rollback().await;
    Ok((State::load(rows?, meta.rev, meta.compact_rev), meta))
}

/// Coalesces concurrent "what is the committed revision?" queries: a query started after a caller arrived
/// answers for it, so N concurrent linearizable reads cost about one database round trip.
#[derive(Debug, Default)]
struct Barrier {
    lock: tokio::sync::Mutex<()>,
    arrivals: AtomicU64,
    covered: AtomicU64,
    rev: std::sync::atomic::AtomicI64,
}

impl Barrier {
    async fn committed_rev(&self, db: &Db) -> Result<i64, EtcdError> {
        let ticket = self.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
        let _guard = self.lock.lock().await;
        if self.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(self.rev.load(Ordering::SeqCst));
        }
        let upto = self.arrivals.load(Ordering::SeqCst);
        let rev = db.meta().await?.rev;
        self.rev.store(rev, Ordering::SeqCst);
        self.covered.store(upto, Ordering::SeqCst);
        Ok(rev)
    }
}
