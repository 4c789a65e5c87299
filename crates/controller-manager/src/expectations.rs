//! Controller expectations, as upstream's: after creating or deleting pods a controller waits until its
//! cache has seen those changes before it counts pods again, so a lagging cache never makes it create or
//! delete twice. Expectations older than five minutes are given up (the cache may have missed them).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const TTL: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Pending {
    adds: i64,
    /// Keys of pods whose deletion has not been seen yet.
    deletes: HashSet<String>,
    since: Instant,
}

#[derive(Debug, Default)]
pub struct Expectations {
    by_controller: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Whether the controller `key` may count its pods (nothing pending, or pending too long).
    pub fn satisfied(&self, key: &str) -> bool {
        match self.by_controller.lock().get(key) {
            None => true,
            Some(p) => (p.adds <= 0 && p.deletes.is_empty()) || p.since.elapsed() > TTL,
        }
    }

    /// About to create `n` pods.
    pub fn expect_creations(&self, key: &str, n: usize) {
        self.by_controller.lock().insert(
            key.to_string(),
            Pending {
                adds: n as i64,
                deletes: HashSet::new(),
                since: Instant::now(),
            },
        );
    }

    /// About to delete these pods.
    pub fn expect_deletions(&self, key: &str, pods: impl IntoIterator<Item = String>) {
        self.by_controller.lock().insert(
            key.to_string(),
            Pending {
                adds: 0,
                deletes: pods.into_iter().collect(),
                since: Instant::now(),
            },
        );
    }

    /// A pod of `key` appeared (or a creation failed and will not appear).
    pub fn creation_observed(&self, key: &str) {
        if let Some(p) = self.by_controller.lock().get_mut(key) {
            p.adds -= 1;
        }
    }

    /// `pod` of `key` is gone or going (or its deletion failed).
    pub fn deletion_observed(&self, key: &str, pod: &str) {
        if let Some(p) = self.by_controller.lock().get_mut(key) {
            p.deletes.remove(pod);
        }
    }

    /// The controller is gone.
    pub fn forget(&self, key: &str) {
        self.by_controller.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_once_every_expected_change_is_seen() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/rs"));
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.expect_deletions("ns/rs", ["ns/a".to_string(), "ns/b".to_string()]);
        e.deletion_observed("ns/rs", "ns/a");
        e.deletion_observed("ns/rs", "ns/a");
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
    }
}
