//! Core value types: key ranges, stored key-values, log rows and watch events.

use std::sync::Arc;

use bytes::Bytes;

use crate::pb;

/// One version of a live key, shared between the in-memory index and watch events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvData {
    pub key: Bytes,
    pub create_rev: i64,
    pub mod_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Bytes,
}

impl KvData {
    /// The protobuf form (copies key and value).
    pub fn to_pb(&self, keys_only: bool) -> pb::KeyValue {
        pb::KeyValue {
            key: self.key.to_vec(),
            create_revision: self.create_rev,
            mod_revision: self.mod_rev,
            version: self.version,
            value: if keys_only {
                Vec::new()
            } else {
                self.value.to_vec()
            },
            lease: self.lease,
        }
    }

    /// What a delete event carries: the key and the delete's revision.
    pub fn tombstone(key: Bytes, rev: i64) -> Self {
        Self {
            key,
            create_rev: 0,
            mod_rev: rev,
            version: 0,
            lease: 0,
            value: Bytes::new(),
        }
    }

    /// Approximate heap cost, for the watch ring's byte budget.
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + 48
    }
}

/// A row of the revision log, as stored in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub rev: i64,
    /// Position of the change inside its revision (a txn may change several keys).
    pub sub: i64,
    pub key: Bytes,
    /// For a put: the key's create revision. For a delete: 0.
    pub create_rev: i64,
    /// Revision of the previous row of this key (live or tombstone), 0 when none.
    pub prev_rev: i64,
    /// For a put: the key's version. For a delete: 0.
    pub version: i64,
    pub lease: i64,
    pub deleted: bool,
    pub value: Bytes,
}

impl Row {
    /// The event this row records, given the key-value it replaced.
    pub fn event(&self, prev: Option<Arc<KvData>>) -> Event {
        let kv = if self.deleted {
            KvData::tombstone(self.key.clone(), self.rev)
        } else {
            self.kv()
        };
        Event {
            deleted: self.deleted,
            kv: Arc::new(kv),
            prev,
        }
    }

    /// The key-value a put row describes.
    pub fn kv(&self) -> KvData {
        KvData {
            key: self.key.clone(),
            create_rev: self.create_rev,
            mod_rev: self.rev,
            version: self.version,
            lease: self.lease,
            value: self.value.clone(),
        }
    }
}

/// A change to one key, as watchers see it.
#[derive(Debug, Clone)]
pub struct Event {
    pub deleted: bool,
    /// For a put: the new key-value. For a delete: the key, with `mod_rev` = the delete's revision.
    pub kv: Arc<KvData>,
    /// The key-value before this change, when there was a live one.
    pub prev: Option<Arc<KvData>>,
}

impl Event {
    pub fn key(&self) -> &[u8] {
        &self.kv.key
    }

    /// The protobuf form; `prev_kv` only when the watcher asked for it.
    pub fn to_pb(&self, with_prev: bool) -> pb::Event {
        // A delete's key-value is a tombstone: key and revision, the rest zero.
        let kv = self.kv.to_pb(false);
        pb::Event {
            r#type: if self.deleted {
                pb::event_type::DELETE
            } else {
                pb::event_type::PUT
            },
            kv: Some(kv),
            prev_kv: if with_prev {
                self.prev.as_ref().map(|p| p.to_pb(false))
            } else {
                None
            },
        }
    }

    pub fn size(&self) -> usize {
        self.kv.size() + self.prev.as_ref().map_or(0, |p| p.size())
    }
}

/// All events of one revision, in the order the txn made them.
#[derive(Debug)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
}

impl RevEvents {
    pub fn size(&self) -> usize {
        self.events.iter().map(Event::size).sum::<usize>() + 32
    }
}

/// A key range as etcd requests express it: one key, `[start, end)`, or every key from `start` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    /// `None` with `single == false`: no upper bound.
    pub end: Option<Bytes>,
    pub single: bool,
}

impl KeyRange {
    /// Interprets `key`/`range_end` as etcd does: empty end = the key alone, `"\0"` = every key >= key.
    pub fn from_request(key: &[u8], range_end: &[u8]) -> Self {
        let start = Bytes::copy_from_slice(key);
        if range_end.is_empty() {
            Self {
                end: None,
                single: true,
                start,
            }
        } else if range_end == [0] {
            Self {
                start,
                end: None,
                single: false,
            }
        } else {
            Self {
                start,
                end: Some(Bytes::copy_from_slice(range_end)),
                single: false,
            }
        }
    }

    /// Every key.
    #[cfg(test)]
    pub fn all() -> Self {
        Self {
            start: Bytes::from_static(&[0]),
            end: None,
            single: false,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        if self.single {
            return key == self.start.as_ref();
        }
        key >= self.start.as_ref() && self.end.as_ref().is_none_or(|e| key < e.as_ref())
    }

    /// Whether the range can hold no key at all (`end <= start`).
    pub fn is_empty(&self) -> bool {
        !self.single
            && self
                .end
                .as_ref()
                .is_some_and(|e| e.as_ref() <= self.start.as_ref())
    }

    /// Bounds for `BTreeMap::range`.
    pub fn bounds(&self) -> (std::ops::Bound<Bytes>, std::ops::Bound<Bytes>) {
        use std::ops::Bound;
        if self.single {
            return (
                Bound::Included(self.start.clone()),
                Bound::Included(self.start.clone()),
            );
        }
        if self.is_empty() {
            // An empty interval BTreeMap accepts: [start, start).
            return (
                Bound::Included(self.start.clone()),
                Bound::Excluded(self.start.clone()),
            );
        }
        (
            Bound::Included(self.start.clone()),
            match &self.end {
                Some(e) => Bound::Excluded(e.clone()),
                None => Bound::Unbounded,
            },
        )
    }

    /// Whether two ranges share a key (used for etcd's duplicate-key check in txns).
    pub fn intersects(&self, other: &KeyRange) -> bool {
        if self.is_empty() || other.is_empty() {
            return false;
        }
        if self.single {
            return other.contains(&self.start);
        }
        if other.single {
            return self.contains(&other.start);
        }
        let a_before_b_end = other.end.as_ref().is_none_or(|e| self.start < *e);
        let b_before_a_end = self.end.as_ref().is_none_or(|e| other.start < *e);
        a_before_b_end && b_before_a_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_range_forms() {
        let single = KeyRange::from_request(b"a", b"");
        assert!(single.contains(b"a") && !single.contains(b"ab"));
        let prefix = KeyRange::from_request(b"a", b"b");
        assert!(prefix.contains(b"a") && prefix.contains(b"azz") && !prefix.contains(b"b"));
        let from = KeyRange::from_request(b"m", b"\0");
        assert!(from.contains(b"m") && from.contains(b"\xff\xff") && !from.contains(b"l"));
        let inverted = KeyRange::from_request(b"b", b"a");
        assert!(inverted.is_empty() && !inverted.contains(b"b"));
    }

    #[test]
    fn intersections() {
        let p = KeyRange::from_request(b"a", b"c");
        assert!(p.intersects(&KeyRange::from_request(b"b", b"")));
        assert!(!p.intersects(&KeyRange::from_request(b"c", b"")));
        assert!(p.intersects(&KeyRange::from_request(b"b", b"\0")));
        assert!(!p.intersects(&KeyRange::from_request(b"c", b"\0")));
        assert!(
            KeyRange::from_request(b"x", b"\0").intersects(&KeyRange::from_request(b"a", b"\0"))
        );
    }
}
