//! One task per gRPC Watch stream: many watchers multiplexed on it, each with its own cursor. Events come
//! from the hub's ring, or from SQL history when a watcher is behind the ring; either way in revision order,
//! each exactly once. Progress notifications and RequestProgress follow etcd 3.5.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::error::EtcdError;
use crate::hub::Since;
use crate::pb::{self, WatchRequest, WatchRequestUnion, WatchResponse, filter_type};
use crate::store::Store;
use crate::types::{Event, KeyRange};

/// Revisions read per history query.
const HISTORY_WINDOW: i64 = 1000;
/// Revisions taken from the ring per pass.
const RING_BATCH: usize = 1000;
/// Soft cap on one response's size (whole revisions are never split unless the watcher asked for fragments).
const RESPONSE_SOFT_CAP: usize = 1 << 20;

/// etcd's `mvcc: duplicate watch ID provided on the WatchStream`.
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// Next revision to deliver.
    cursor: i64,
    start_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether events went out since the last progress tick (etcd then skips the notification).
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        if ev.deleted && self.no_delete || !ev.deleted && self.no_put {
            return false;
        }
        self.range.contains(ev.key())
    }

    fn synced(&self, head: i64) -> bool {
        self.cursor > head && head >= self.start_rev
    }
}

/// Serves one Watch stream until the client goes away or kine stops.
pub fn serve(
    store: Arc<Store>,
    inbound: Streaming<WatchRequest>,
    progress_interval: Duration,
    max_request_bytes: usize,
) -> mpsc::Receiver<Result<WatchResponse, Status>> {
    let (out, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut s = WatchStream {
            store,
            out,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_requested: false,
            max_request_bytes,
        };
        let res = s.run(inbound, progress_interval).await;
        s.store.metrics.watchers.dec_by(s.watchers.len() as i64);
        if let Err(End::Status(status)) = res {
            tracing::debug!(%status, "watch stream ended with an error");
            // Tell the client why, rather than ending the stream as if all were well.
            let _ = s.out.send(Err(status)).await;
        }
    });
    rx
}

struct WatchStream {
    store: Arc<Store>,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_requested: bool,
    max_request_bytes: usize,
}

/// The stream ended (client gone, or kine stopping).
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client closed the stream")]
    Closed,
    #[error("{0}")]
    Status(#[from] Status),
}

impl WatchStream {
    async fn run(
        &mut self,
        mut inbound: Streaming<WatchRequest>,
        progress_interval: Duration,
    ) -> Result<(), End> {
        let mut head_rx = self.store.hub.subscribe();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + progress_interval,
            progress_interval,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let behind = self.deliver().await?;
            self.answer_progress_request().await?;
            tokio::select! {
                biased;
                msg = inbound.message() => match msg? {
                    Some(req) => self.handle(req).await?,
                    None => return Ok(()),
                },
                _ = self.store.shutdown.cancelled() => {
                    return Err(End::Status(Status::unavailable(EtcdError::Stopped.to_string())));
                }
                _ = std::future::ready(()), if behind => {}
                changed = head_rx.changed() => if changed.is_err() { return Ok(()) },
                _ = tick.tick() => self.progress_tick().await?,
            }
        }
    }

    async fn send(&self, resp: WatchResponse) -> Result<(), End> {
        self.out.send(Ok(resp)).await.map_err(|_| End::Closed)
    }

    fn header(&self, rev: i64) -> Option<pb::ResponseHeader> {
        Some(self.store.header(rev))
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), End> {
        let head = self.store.hub.head();
        match req.request_union {
            Some(WatchRequestUnion::CreateRequest(c)) => {
                let invalid = |reason: String| WatchResponse {
                    header: self.header(head),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                };
                if c.start_revision < 0 {
                    return self.send(invalid(EtcdError::Compacted.to_string())).await;
                }
                let id = if c.watch_id != 0 {
                    if self.watchers.contains_key(&c.watch_id) {
                        return self.send(invalid(ERR_DUPLICATE_ID.into())).await;
                    }
                    c.watch_id
                } else {
                    while self.watchers.contains_key(&self.next_id) {
                        self.next_id += 1;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    id
                };
                let key = if c.key.is_empty() { vec![0] } else { c.key };
                let w = Watcher {
                    range: KeyRange::from_request(&key, &c.range_end),
                    cursor: if c.start_revision == 0 {
                        head + 1
                    } else {
                        c.start_revision
                    },
                    start_rev: c.start_revision,
                    prev_kv: c.prev_kv,
                    no_put: c.filters.contains(&filter_type::NOPUT),
                    no_delete: c.filters.contains(&filter_type::NODELETE),
                    progress_notify: c.progress_notify,
                    fragment: c.fragment,
                    sent_since_tick: false,
                };
                self.send(WatchResponse {
                    header: self.header(head),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                })
                .await?;
                let compact = self.store.compact_rev();
                if c.start_revision > 0 && c.start_revision < compact {
                    return self.send(self.compacted(id, compact)).await;
                }
                self.watchers.insert(id, w);
                self.store.metrics.watchers.inc();
                Ok(())
            }
            Some(WatchRequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    self.store.metrics.watchers.dec();
                    self.send(WatchResponse {
                        header: self.header(head),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(WatchRequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn compacted(&self, id: i64, compact: i64) -> WatchResponse {
        WatchResponse {
            header: self.header(self.store.hub.head()),
            watch_id: id,
            canceled: true,
            compact_revision: compact,
            ..Default::default()
        }
    }

    /// Sends every watcher what it has not seen, up to a pass's worth. Returns whether some are still behind.
    async fn deliver(&mut self) -> Result<bool, End> {
        let head = self.store.hub.head();
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.cursor <= head)
            .map(|(id, _)| *id)
            .collect();
        let mut behind = false;
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let (events, upto) = match self.store.hub.since(w.cursor, RING_BATCH) {
                Since::Events(batches) => {
                    let Some(last) = batches.last().map(|b| b.rev) else {
                        continue;
                    };
                    let mut events = Vec::new();
                    let mut size = 0;
                    let mut upto = last;
                    for b in &batches {
                        for ev in b.events.iter().filter(|e| w.wants(e)) {
                            size += ev.size();
                            events.push(ev.to_pb(w.prev_kv));
                        }
                        if size > RESPONSE_SOFT_CAP {
                            upto = b.rev;
                            break;
                        }
                    }
                    (events, upto)
                }
                Since::TooOld => match self.history(id, head).await? {
                    Some(found) => found,
                    None => continue,
                },
            };
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            w.cursor = upto + 1;
            behind |= w.cursor <= head;
            if events.is_empty() {
                continue;
            }
            w.sent_since_tick = true;
            let fragment = w.fragment;
            self.store.metrics.watch_events.inc_by(events.len() as u64);
            let resp = WatchResponse {
                header: self.header(upto),
                watch_id: id,
                events,
                ..Default::default()
            };
            if fragment {
                self.send_fragments(resp).await?;
            } else {
                self.send(resp).await?;
            }
        }
        Ok(behind)
    }

    /// Reads a lagging watcher's next window of history from SQL. `None` when the watcher was cancelled
    /// because that history is compacted.
    async fn history(&mut self, id: i64, head: i64) -> Result<Option<(Vec<pb::Event>, i64)>, End> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(None);
        };
        self.store.metrics.watch_history_reads.inc();
        let upto = (w.cursor + HISTORY_WINDOW - 1).min(head);
        let rows = self
            .store
            .db
            .history(&w.range, w.cursor, upto, w.prev_kv)
            .await
            .map_err(Status::from)?;
        let compact = self.store.compact_rev_now().await.map_err(Status::from)?;
        if w.cursor < compact {
            self.watchers.remove(&id);
            self.store.metrics.watchers.dec();
            self.send(self.compacted(id, compact)).await?;
            return Ok(None);
        }
        let events = rows
            .into_iter()
            .map(|(row, prev)| row.event(prev.map(Arc::new)))
            .filter(|ev| w.wants(ev))
            .map(|ev| ev.to_pb(w.prev_kv))
            .collect();
        Ok(Some((events, upto)))
    }

    /// etcd's `sendFragments`: splits a response over `max_request_bytes` into fragments.
    async fn send_fragments(&self, resp: WatchResponse) -> Result<(), End> {
        if resp.encoded_len() < self.max_request_bytes || resp.events.len() < 2 {
            return self.send(resp).await;
        }
        let mut events = resp.events.into_iter().peekable();
        while events.peek().is_some() {
            let mut cur = WatchResponse {
                header: resp.header,
                watch_id: resp.watch_id,
                fragment: true,
                ..Default::default()
            };
            while let Some(ev) = events.peek() {
                if !cur.events.is_empty()
                    && cur.encoded_len() + ev.encoded_len() + 4 >= self.max_request_bytes
                {
                    break;
                }
                if let Some(ev) = events.next() {
                    cur.events.push(ev);
                }
            }
            cur.fragment = events.peek().is_some();
            self.send(cur).await?;
        }
        Ok(())
    }

    /// RequestProgress (etcd 3.5): once every watcher is synced, one response with watch id -1.
    async fn answer_progress_request(&mut self) -> Result<(), End> {
        if !self.progress_requested {
            return Ok(());
        }
        let head = self.store.hub.head();
        if self.watchers.values().any(|w| !w.synced(head)) {
            return Ok(());
        }
        self.progress_requested = false;
        if self.watchers.is_empty() {
            return Ok(());
        }
        self.send(WatchResponse {
            header: self.header(head),
            watch_id: -1,
            ..Default::default()
        })
        .await
    }

    /// Periodic progress notifications to synced watchers that asked for them and got no events lately.
    async fn progress_tick(&mut self) -> Result<(), End> {
        let head = self.store.hub.head();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.sent_since_tick && w.synced(head))
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in due {
            self.send(WatchResponse {
                header: self.header(head),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
