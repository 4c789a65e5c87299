//! The in-memory index: the newest row of every key (tombstones until compacted), the revision it reflects,
//! and which keys each lease holds. Rows are applied strictly in revision order; applying yields watch events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::types::{Event, KeyRange, KvData, RevEvents, Row};

/// The newest state of one key.
#[derive(Debug, Clone)]
pub enum Slot {
    Live(Arc<KvData>),
    /// Deleted at this revision (kept until compaction passes it, so historical reads know).
    Dead(i64),
}

impl Slot {
    pub fn mod_rev(&self) -> i64 {
        match self {
            Slot::Live(kv) => kv.mod_rev,
            Slot::Dead(rev) => *rev,
        }
    }

    pub fn live(&self) -> Option<&Arc<KvData>> {
        match self {
            Slot::Live(kv) => Some(kv),
            Slot::Dead(_) => None,
        }
    }
}

/// Rows that do not continue the applied revision sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision gap: applied up to {applied}, next row is revision {next}")]
pub struct Gap {
    pub applied: i64,
    pub next: i64,
}

#[derive(Debug, Default)]
pub struct State {
    map: BTreeMap<Bytes, Slot>,
    rev: i64,
    compact_rev: i64,
    leases: HashMap<i64, BTreeSet<Bytes>>,
    live: usize,
}

impl State {
    /// An index at `rev` built from the newest row of every key.
    pub fn load(latest: Vec<Row>, rev: i64, compact_rev: i64) -> Self {
        let mut state = Self {
            rev,
            compact_rev,
            ..Default::default()
        };
        for row in latest {
            if row.deleted {
                if row.rev > compact_rev {
                    state.map.insert(row.key, Slot::Dead(row.rev));
                }
            } else {
                state.attach(row.lease, &row.key);
                state.live += 1;
                state
                    .map
                    .insert(row.key.clone(), Slot::Live(Arc::new(row.kv())));
            }
        }
        state
    }

    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }

    /// Number of live keys.
    pub fn live_keys(&self) -> usize {
        self.live
    }

    pub fn slot(&self, key: &[u8]) -> Option<&Slot> {
        self.map.get(key)
    }

    pub fn get(&self, key: &[u8]) -> Option<&Arc<KvData>> {
        self.map.get(key).and_then(Slot::live)
    }

    /// Every slot (live or dead) in `range`, in key order.
    pub fn slots<'a>(
        &'a self,
        range: &KeyRange,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Slot)> + 'a {
        self.map.range(range.bounds())
    }

    /// The keys currently attached to `lease`.
    pub fn lease_keys(&self, lease: i64) -> impl Iterator<Item = &Bytes> {
        self.leases.get(&lease).into_iter().flatten()
    }

    /// Visits the live keys of `range` as of revision `at`, in key order, while `f` returns true.
    /// Returns false, having possibly visited some keys, when the index cannot answer for `at`
    /// because a key in the range changed after it (the caller then reads history from SQL).
    pub fn visit_at(
        &self,
        range: &KeyRange,
        at: i64,
        mut f: impl FnMut(&Arc<KvData>) -> bool,
    ) -> bool {
        let mut visiting = true;
        for (_, slot) in self.map.range(range.bounds()) {
            if at < self.rev && slot.mod_rev() > at {
                return false;
            }
            if visiting && let Slot::Live(kv) = slot {
                visiting = f(kv);
                if !visiting && at >= self.rev {
                    return true;
                }
            }
        }
        true
    }

    /// Applies complete revisions `rev+1 ..` from rows sorted by (rev, sub) and returns their events.
    /// Rows at or below the applied revision are skipped (they were applied already). Nothing is
    /// applied when the rows do not continue the sequence.
    pub fn apply(&mut self, rows: &[Row]) -> Result<Vec<RevEvents>, Gap> {
        let mut expect = self.rev;
        for row in rows.iter().filter(|r| r.rev > self.rev) {
            if row.rev != expect && row.rev != expect + 1 {
                return Err(Gap {
                    applied: self.rev,
                    next: row.rev,
                });
            }
            expect = row.rev;
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let rev = rows[i].rev;
            let j = i + rows[i..].iter().take_while(|r| r.rev == rev).count();
            if rev > self.rev {
                let events = rows[i..j].iter().map(|r| self.apply_row(r)).collect();
                self.rev = rev;
                out.push(RevEvents { rev, events });
            }
            i = j;
        }
        Ok(out)
    }

    fn apply_row(&mut self, row: &Row) -> Event {
        let prev = self.map.get(&row.key).and_then(Slot::live).cloned();
        if let Some(p) = &prev {
            self.detach(p.lease, &row.key);
            self.live -= 1;
        }
        let event = row.event(prev);
        let slot = if row.deleted {
            Slot::Dead(row.rev)
        } else {
            self.attach(row.lease, &row.key);
            self.live += 1;
            Slot::Live(event.kv.clone())
        };
        self.map.insert(row.key.clone(), slot);
        event
    }

    /// Records a compaction to `rev`: tombstones at or below it are of no further use.
    pub fn compacted(&mut self, rev: i64) {
        if rev <= self.compact_rev {
            return;
        }
        self.compact_rev = rev;
        self.map
            .retain(|_, slot| !matches!(slot, Slot::Dead(d) if *d <= rev));
    }

    fn attach(&mut self, lease: i64, key: &Bytes) {
        if lease != 0 {
            self.leases.entry(lease).or_default().insert(key.clone());
        }
    }

    fn detach(&mut self, lease: i64, key: &Bytes) {
        if lease == 0 {
            return;
        }
        if let Some(keys) = self.leases.get_mut(&lease) {
            keys.remove(key);
            if keys.is_empty() {
                self.leases.remove(&lease);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(rev: i64, sub: i64, key: &str, value: &str, create: i64, version: i64) -> Row {
        Row {
            rev,
            sub,
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_rev: create,
            prev_rev: 0,
            version,
            lease: 0,
            deleted: false,
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    fn del(rev: i64, key: &str) -> Row {
        Row {
            rev,
            sub: 0,
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_rev: 0,
            prev_rev: 0,
            version: 0,
            lease: 0,
            deleted: true,
            value: Bytes::new(),
        }
    }

    #[test]
    fn applies_in_order_and_reports_prev() {
        let mut s = State::load(Vec::new(), 1, 0);
        let ev = s
            .apply(&[
                put(2, 0, "a", "1", 2, 1),
                put(2, 1, "b", "1", 2, 1),
                put(3, 0, "a", "2", 2, 2),
            ])
            .unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].events.len(), 2);
        assert_eq!(ev[1].events[0].prev.as_ref().unwrap().value.as_ref(), b"1");
        assert_eq!(s.rev(), 3);
        let ev = s.apply(&[del(4, "a")]).unwrap();
        assert!(ev[0].events[0].deleted);
        assert_eq!(s.live_keys(), 1);
        assert_eq!(
            s.apply(&[del(6, "b")]).unwrap_err(),
            Gap {
                applied: 4,
                next: 6
            }
        );
    }

    #[test]
    fn historical_visits_refuse_newer_keys() {
        let mut s = State::load(Vec::new(), 1, 0);
        s.apply(&[put(2, 0, "a", "1", 2, 1), put(3, 0, "b", "1", 3, 1)])
            .unwrap();
        let all = KeyRange::all();
        assert!(!s.visit_at(&all, 2, |_| true));
        assert!(s.visit_at(&KeyRange::from_request(b"a", b""), 2, |_| true));
        s.apply(&[del(4, "a")]).unwrap();
        assert!(!s.visit_at(&KeyRange::from_request(b"a", b""), 3, |_| true));
        s.compacted(4);
        let mut n = 0;
        assert!(s.visit_at(&all, 4, |_| {
            n += 1;
            true
        }));
        assert_eq!(n, 1);
    }
}
