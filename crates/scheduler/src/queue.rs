//! The scheduling queue, as upstream's `PriorityQueue`: pods wait in activeQ (highest priority first,
//! then oldest), in backoffQ after a failed attempt (1 s doubling to 10 s), or among the unschedulable
//! pods until a cluster event that could help them (a node added, a pod deleted, a claim bound …) or 5
//! minutes pass. A pod rejected while such an event arrived during its attempt goes to backoff instead,
//! so no event is missed. Pods with scheduling gates wait apart until the gates are gone.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::framework::Event;
use crate::pod::PodInfo;

/// How long a rejected pod waits for an event before it is tried again anyway.
const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    Active,
    Backoff,
    Unschedulable,
    Gated,
    /// Popped: being scheduled or bound.
    InFlight,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    at: Where,
    attempts: u32,
    /// When the pod entered the queue (ordering and end-to-end latency).
    added: Instant,
    last_failure: Option<Instant>,
    /// Plugins that rejected it last (empty: an error, any event may help).
    rejected_by: Vec<&'static str>,
    profile: usize,
    /// Changes each time the pod moves, so stale heap entries are skipped.
    seq: u64,
    /// The scheduling cycle it was popped in.
    cycle: u64,
    /// Changed while being scheduled: the attempt used the old spec, so it is retried.
    updated_in_flight: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct ActiveKey {
    priority: i32,
    added: Instant,
    seq: u64,
    uid: Arc<str>,
}

impl Ord for ActiveKey {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.added.cmp(&self.added))
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, PartialEq, Eq)]
struct BackoffKey {
    until: Instant,
    seq: u64,
    uid: Arc<str>,
}

impl Ord for BackoffKey {
    fn cmp(&self, o: &Self) -> Ordering {
        o.until.cmp(&self.until).then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for BackoffKey {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<Arc<str>, Entry>,
    active: BinaryHeap<ActiveKey>,
    backoff: BinaryHeap<BackoffKey>,
    /// Pods waiting for an event (kept apart so an event does not scan every pending pod).
    unsched: std::collections::HashSet<Arc<str>>,
    seq: u64,
    cycle: u64,
    /// The cycle at which the last move-inducing event arrived.
    move_cycle: u64,
    closed: bool,
}

/// What `pop` hands the scheduler.
#[derive(Debug, Clone)]
pub struct Popped {
    pub pod: Arc<PodInfo>,
    pub profile: usize,
    pub attempts: u32,
    pub cycle: u64,
    pub added: Instant,
}

/// Queue sizes by where pods wait.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sizes {
    pub active: usize,
    pub backoff: usize,
    pub unschedulable: usize,
    pub gated: usize,
}

#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    notify: Notify,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn move_active(&mut self, uid: &Arc<str>) {
        self.unsched.remove(uid);
        let seq = self.next_seq();
        if let Some(e) = self.pods.get_mut(uid) {
            e.at = Where::Active;
            e.seq = seq;
            self.active.push(ActiveKey {
                priority: e.pod.priority,
                added: e.added,
                seq,
                uid: uid.clone(),
            });
        }
    }

    fn move_backoff(&mut self, uid: &Arc<str>, until: Instant) {
        self.unsched.remove(uid);
        let seq = self.next_seq();
        if let Some(e) = self.pods.get_mut(uid) {
            e.at = Where::Backoff;
            e.seq = seq;
            self.backoff.push(BackoffKey {
                until,
                seq,
                uid: uid.clone(),
            });
        }
    }
}

impl Queue {
    pub fn new(initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            notify: Notify::new(),
            initial_backoff,
            max_backoff,
        }
    }

    fn backoff_for(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1 << shift)
            .min(self.max_backoff)
    }

    fn backoff_until(&self, e: &Entry) -> Option<Instant> {
        let until = e.last_failure? + self.backoff_for(e.attempts);
        (until > Instant::now()).then_some(until)
    }

    /// A pending pod appeared or changed (from the watch).
    pub fn add_or_update(&self, pod: Arc<PodInfo>, profile: usize) {
        let mut q = self.inner.lock();
        let uid = pod.uid.clone();
        let gated = pod.pending().gated;
        match q.pods.get_mut(&uid) {
            None => {
                q.pods.insert(
                    uid.clone(),
                    Entry {
                        pod,
                        at: Where::Gated,
                        attempts: 0,
                        added: Instant::now(),
                        last_failure: None,
                        rejected_by: Vec::new(),
                        profile,
                        seq: 0,
                        cycle: 0,
                        updated_in_flight: false,
                    },
                );
                if !gated {
                    q.move_active(&uid);
                }
            }
            Some(e) => {
                let changed = e.pod != pod;
                e.pod = pod;
                e.profile = profile;
                let at = e.at;
                if at == Where::InFlight && changed {
                    e.updated_in_flight = true;
                }
                match at {
                    Where::Gated if !gated => q.move_active(&uid),
                    Where::Unschedulable if changed => {
                        // An update may have made it schedulable: retry it (after its backoff).
                        match q.pods.get(&uid).and_then(|e| self.backoff_until(e)) {
                            Some(until) => q.move_backoff(&uid, until),
                            None => q.move_active(&uid),
                        }
                    }
                    Where::Active if changed => q.move_active(&uid),
                    _ => {}
                }
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    /// The pod is gone, bound, or no longer this scheduler's.
    pub fn remove(&self, uid: &str) {
        let mut q = self.inner.lock();
        q.pods.remove(uid);
        q.unsched.remove(uid);
    }

    /// After a relist: pending pods not in `seen` are gone (those being scheduled stay; binding
    /// tells).
    pub fn retain(&self, seen: &std::collections::HashSet<Arc<str>>) {
        let mut q = self.inner.lock();
        let gone: Vec<Arc<str>> = q
            .pods
            .iter()
            .filter(|(uid, e)| e.at != Where::InFlight && !seen.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            q.pods.remove(&uid);
            q.unsched.remove(&uid);
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.inner.lock().pods.contains_key(uid)
    }

    /// Waits for the next pod to schedule (`None` once closed).
    pub async fn pop(&self) -> Option<Popped> {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.inner.lock();
                if q.closed {
                    return None;
                }
                while let Some(k) = q.active.pop() {
                    let valid = q
                        .pods
                        .get(&k.uid)
                        .is_some_and(|e| e.at == Where::Active && e.seq == k.seq);
                    if !valid {
                        continue;
                    }
                    q.cycle += 1;
                    let cycle = q.cycle;
                    let e = q.pods.get_mut(&k.uid).expect("checked above");
                    e.at = Where::InFlight;
                    e.attempts += 1;
                    e.cycle = cycle;
                    return Some(Popped {
                        pod: e.pod.clone(),
                        profile: e.profile,
                        attempts: e.attempts,
                        cycle,
                        added: e.added,
                    });
                }
            }
            notified.await;
        }
    }

    /// The pod could not be placed: it waits for an event (or backs off, if one came meanwhile or it
    /// failed for no plugin's reason).
    pub fn unschedulable(&self, uid: &str, rejected_by: Vec<&'static str>) {
        let mut q = self.inner.lock();
        let move_cycle = q.move_cycle;
        let Some(e) = q.pods.get_mut(uid) else {
            return;
        };
        if e.at != Where::InFlight {
            return;
        }
        e.last_failure = Some(Instant::now());
        let uid = Arc::clone(&e.pod.uid);
        let retry = rejected_by.is_empty() || move_cycle >= e.cycle || e.updated_in_flight;
        e.updated_in_flight = false;
        e.rejected_by = rejected_by;
        if retry {
            let until = Instant::now() + self.backoff_for(e.attempts);
            q.move_backoff(&uid, until);
        } else {
            e.at = Where::Unschedulable;
            q.unsched.insert(uid);
        }
    }

    /// Binding failed (or another error): back off and retry.
    pub fn retry_later(&self, uid: &str) {
        self.unschedulable(uid, Vec::new());
    }

    /// A cluster event: pods rejected by a plugin that cares about it move to backoff or active.
    pub fn move_for(&self, event: Event, cares: impl Fn(usize, &str, Event) -> bool) {
        let mut q = self.inner.lock();
        q.move_cycle = q.cycle;
        if q.unsched.is_empty() {
            return;
        }
        let candidates: Vec<Arc<str>> = q
            .unsched
            .iter()
            .filter_map(|uid| Some((uid, q.pods.get(uid)?)))
            .filter(|(_, e)| e.at == Where::Unschedulable)
            .filter(|(_, e)| {
                event == Event::Timeout
                    || e.rejected_by.is_empty()
                    || e.rejected_by.iter().any(|p| cares(e.profile, p, event))
            })
            .filter(|(_, e)| {
                event != Event::Timeout
                    || e.last_failure
                        .is_some_and(|t| t.elapsed() >= UNSCHEDULABLE_TIMEOUT)
            })
            .map(|(u, _)| u.clone())
            .collect();
        let mut moved = false;
        for uid in candidates {
            match q.pods.get(&uid).and_then(|e| self.backoff_until(e)) {
                Some(until) => q.move_backoff(&uid, until),
                None => {
                    q.move_active(&uid);
                    moved = true;
                }
            }
        }
        drop(q);
        if moved {
            self.notify.notify_one();
        }
    }

    /// Moves pods whose backoff has ended to activeQ; returns when the next one ends.
    pub fn flush_backoff(&self) -> Option<Instant> {
        let mut q = self.inner.lock();
        let now = Instant::now();
        let mut moved = false;
        while let Some(k) = q.backoff.peek() {
            let valid = q
                .pods
                .get(&k.uid)
                .is_some_and(|e| e.at == Where::Backoff && e.seq == k.seq);
            if !valid {
                q.backoff.pop();
                continue;
            }
            if k.until > now {
                break;
            }
            let k = q.backoff.pop().expect("peeked");
            q.move_active(&k.uid);
            moved = true;
        }
        let next = q.backoff.peek().map(|k| k.until);
        drop(q);
        if moved {
            self.notify.notify_one();
        }
        next
    }

    pub fn sizes(&self) -> Sizes {
        let q = self.inner.lock();
        let mut s = Sizes::default();
        for e in q.pods.values() {
            match e.at {
                Where::Active => s.active += 1,
                Where::Backoff => s.backoff += 1,
                Where::Unschedulable => s.unschedulable += 1,
                Where::Gated => s.gated += 1,
                Where::InFlight => {}
            }
        }
        s
    }

    /// Where the pod waits, if it does.
    pub fn state_of(&self, uid: &str) -> Option<Where> {
        self.inner.lock().pods.get(uid).map(|e| e.at)
    }

    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::WirePod;
    use serde_json::json;

    fn pod(uid: &str, priority: i32) -> Arc<PodInfo> {
        let w: WirePod = serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"priority": priority, "containers": [{"name": "c"}]}}))
        .unwrap();
        Arc::new(w.info())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn higher_priority_first_then_oldest() {
        let q = Queue::new(Duration::from_secs(1), Duration::from_secs(10));
        q.add_or_update(pod("a", 0), 0);
        q.add_or_update(pod("b", 10), 0);
        q.add_or_update(pod("c", 0), 0);
        let rt = rt();
        let order: Vec<String> = (0..3)
            .map(|_| rt.block_on(q.pop()).unwrap().pod.uid.to_string())
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
    }

    #[test]
    fn rejected_pods_wait_for_an_event_then_back_off() {
        let q = Queue::new(Duration::from_secs(1), Duration::from_secs(10));
        q.add_or_update(pod("a", 0), 0);
        let rt = rt();
        let p = rt.block_on(q.pop()).unwrap();
        assert_eq!(p.attempts, 1);
        q.unschedulable("a", vec!["NodeResourcesFit"]);
        assert_eq!(q.state_of("a"), Some(Where::Unschedulable));
        // An event no rejecting plugin cares about leaves it.
        q.move_for(Event::NamespaceLabels, |_, p, e| {
            p == "NodeResourcesFit" && e == Event::NodeAdd
        });
        assert_eq!(q.state_of("a"), Some(Where::Unschedulable));
        q.move_for(Event::NodeAdd, |_, p, e| {
            p == "NodeResourcesFit" && e == Event::NodeAdd
        });
        // Failed just now: it serves its 1 s backoff first.
        assert_eq!(q.state_of("a"), Some(Where::Backoff));
    }

    #[test]
    fn an_event_during_the_attempt_is_not_lost() {
        let q = Queue::new(Duration::from_millis(1), Duration::from_millis(1));
        q.add_or_update(pod("a", 0), 0);
        let rt = rt();
        rt.block_on(q.pop()).unwrap();
        q.move_for(Event::NodeAdd, |_, _, _| true);
        q.unschedulable("a", vec!["NodeResourcesFit"]);
        assert_eq!(q.state_of("a"), Some(Where::Backoff));
        std::thread::sleep(Duration::from_millis(5));
        q.flush_backoff();
        assert_eq!(q.state_of("a"), Some(Where::Active));
    }

    #[test]
    fn backoff_doubles_to_the_maximum() {
        let q = Queue::new(Duration::from_secs(1), Duration::from_secs(10));
        assert_eq!(q.backoff_for(1), Duration::from_secs(1));
        assert_eq!(q.backoff_for(3), Duration::from_secs(4));
        assert_eq!(q.backoff_for(9), Duration::from_secs(10));
    }
}
