//! The event hub: a bounded in-memory ring of the most recent revisions' events, and the published head
//! revision. Watch streams pull from it by revision; one that falls behind the ring reads history from SQL,
//! so no watcher is ever dropped or skipped for being slow.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::types::RevEvents;

#[derive(Debug)]
pub struct Hub {
    ring: Mutex<Ring>,
    head: watch::Sender<i64>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Ring {
    batches: VecDeque<Arc<RevEvents>>,
    bytes: usize,
}

/// What the ring holds from a cursor on.
#[derive(Debug)]
pub enum Since {
    /// Consecutive revisions starting at the cursor (empty when the cursor is past the head).
    Events(Vec<Arc<RevEvents>>),
    /// The cursor is older than the ring: read those revisions from SQL.
    TooOld,
}

impl Hub {
    pub fn new(head: i64, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            head: watch::Sender::new(head),
            max_bytes,
        }
    }

    /// The newest revision whose events are published.
    pub fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// A receiver woken whenever the head moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Appends consecutive revisions (the caller serialises publishers) and moves the head.
    pub fn publish(&self, batches: Vec<RevEvents>) {
        let Some(last) = batches.last().map(|b| b.rev) else {
            return;
        };
        {
            let mut ring = self.ring.lock();
            for batch in batches {
                ring.bytes += batch.size();
                ring.batches.push_back(Arc::new(batch));
            }
            while ring.bytes > self.max_bytes && ring.batches.len() > 1 {
                if let Some(old) = ring.batches.pop_front() {
                    ring.bytes -= old.size();
                }
            }
        }
        self.head.send_replace(last);
    }

    /// Forgets the ring and jumps the head (after the index was rebuilt from the database).
    pub fn reset(&self, head: i64) {
        {
            let mut ring = self.ring.lock();
            ring.batches.clear();
            ring.bytes = 0;
        }
        self.head.send_replace(head);
    }

    /// Up to `max` revisions' events starting at revision `cursor`.
    pub fn since(&self, cursor: i64, max: usize) -> Since {
        let ring = self.ring.lock();
        let Some(front) = ring.batches.front() else {
            return if cursor > self.head() {
                Since::Events(Vec::new())
            } else {
                Since::TooOld
            };
        };
        if cursor < front.rev {
            return Since::TooOld;
        }
        let skip = usize::try_from(cursor - front.rev).unwrap_or(usize::MAX);
        Since::Events(ring.batches.iter().skip(skip).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rev: i64) -> RevEvents {
        RevEvents {
            rev,
            events: Vec::new(),
        }
    }

    #[test]
    fn ring_serves_recent_and_refuses_old() {
        let hub = Hub::new(1, 100);
        assert!(matches!(hub.since(2, 10), Since::Events(v) if v.is_empty()));
        assert!(matches!(hub.since(1, 10), Since::TooOld));
        hub.publish((2..=10).map(batch).collect());
        assert_eq!(hub.head(), 10);
        // 32 bytes per empty batch and a 100-byte budget: only the last three stay.
        assert!(matches!(hub.since(7, 10), Since::TooOld));
        match hub.since(9, 10) {
            Since::Events(v) => {
                assert_eq!(v.iter().map(|b| b.rev).collect::<Vec<_>>(), vec![9, 10])
            }
            Since::TooOld => panic!("revision 9 should be in the ring"),
        }
        assert!(matches!(hub.since(11, 10), Since::Events(v) if v.is_empty()));
    }
}
