//! Work queues as client-go's: a key waits at most once however often it is added, is never handled by
//! two workers at once (added again while being handled, it runs once more after), and failures are
//! retried with per-key exponential backoff (5 ms doubling to 5 min) until a success forgets them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BASE_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(300);

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    /// Keys due to be added later, and when (only the earliest is kept).
    waiting: HashMap<T, tokio::time::Instant>,
    closed: bool,
}

/// A deduplicating, rate-limited work queue of keys.
pub struct Queue<T> {
    state: Arc<Mutex<State<T>>>,
    wake: Arc<Notify>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            state: self.state.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Queue<T> {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                waiting: HashMap::new(),
                closed: false,
            })),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Queues `key` now (once, however often it is added before a worker takes it).
    pub fn add(&self, key: T) {
        let mut s = self.state.lock();
        if s.closed || !s.dirty.insert(key.clone()) {
            return;
        }
        if !s.processing.contains(&key) {
            s.queue.push_back(key);
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Queues `key` after `delay` (once: a key already due sooner is not scheduled again).
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let due = tokio::time::Instant::now() + delay;
        {
            let mut s = self.state.lock();
            if s.waiting.get(&key).is_some_and(|at| *at <= due) {
                return;
            }
            s.waiting.insert(key.clone(), due);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            {
                let mut s = q.state.lock();
                if s.waiting.get(&key) == Some(&due) {
                    s.waiting.remove(&key);
                }
            }
            q.add(key);
        });
    }

    /// Queues `key` again after its next backoff step.
    pub fn add_rate_limited(&self, key: T) {
        let n = {
            let mut s = self.state.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let delay = BASE_DELAY.saturating_mul(1u32 << n.min(20)).min(MAX_DELAY);
        self.add_after(key, delay);
    }

    /// Ends the backoff of `key` (it succeeded).
    pub fn forget(&self, key: &T) {
        self.state.lock().failures.remove(key);
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.wake.notify_waiters();
    }

    /// The next key to handle (`None` once closed); call [`Queue::done`] after.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.wake.notified();
            {
                let mut s = self.state.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.wake.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` handled; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &T) {
        let mut s = self.state.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) && !s.closed {
            s.queue.push_back(key.clone());
            drop(s);
            self.wake.notify_one();
        }
    }
}

/// What one reconcile asks for: nothing more, or to be looked at again after a while.
pub type Outcome = Result<Option<Duration>, crate::Error>;

/// Runs `workers` tasks taking keys from `queue` into `reconcile` until `shutdown`: errors are retried
/// with backoff, a requested delay queues the key again after it.
pub fn run_workers<T, F, Fut>(
    name: &'static str,
    queue: Queue<T>,
    workers: usize,
    shutdown: CancellationToken,
    reconcile: F,
) -> tokio::task::JoinSet<()>
where
    T: Hash + Eq + Clone + Send + Sync + std::fmt::Display + 'static,
    F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    {
        let queue = queue.clone();
        let shutdown = shutdown.clone();
        set.spawn(async move {
            shutdown.cancelled().await;
            queue.close();
        });
    }
    for _ in 0..workers {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        set.spawn(async move {
            while let Some(key) = queue.get().await {
                match reconcile(key.clone()).await {
                    Ok(again) => {
                        queue.forget(&key);
                        if let Some(d) = again {
                            queue.add_after(key.clone(), d);
                        }
                    }
                    Err(err) => {
                        tracing::info!(controller = name, %key, %err, "sync failed, retrying");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_and_is_never_handled_twice_at_once() {
        let q: Queue<String> = Queue::new();
        q.add("a".into());
        q.add("a".into());
        q.add("b".into());
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Added while being handled: not handed out again until done.
        q.add("a".into());
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done(&a);
        assert_eq!(q.get().await.unwrap(), "a");
        q.close();
        assert!(q.get().await.is_none());
    }

    #[tokio::test]
    async fn a_delayed_key_is_scheduled_once() {
        let q: Queue<u32> = Queue::new();
        q.add_after(1, Duration::from_millis(30));
        q.add_after(1, Duration::from_secs(60));
        assert_eq!(q.state.lock().waiting.len(), 1);
        assert_eq!(q.get().await, Some(1));
        assert!(q.state.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q: Queue<u32> = Queue::new();
        for _ in 0..4 {
            q.add_rate_limited(7);
        }
        assert_eq!(q.state.lock().failures[&7], 4);
        q.forget(&7);
        assert!(!q.state.lock().failures.contains_key(&7));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(q.get().await, Some(7));
    }
}
