//! Events as upstream's controllers record them (core/v1 Events, which `kubectl describe` and
//! `kubectl events` show), through client-go's event correlator: a repeat of an event raises the `count`
//! and `lastTimestamp` of the one already written instead of writing another; more than 10 different
//! messages for one object and reason within 10 minutes fold into one event "(combined from similar
//! events): …"; and each object gets a token bucket (25 at once, then one per 5 minutes) so a hot loop
//! cannot flood the store. Writes happen in order on one background task per recorder, so a slow write
//! never holds a reconcile up; at most 1000 wait (more are dropped, as upstream's broadcaster does).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

/// How many events may wait to be written.
const QUEUE: usize = 1000;
/// Distinct messages for one object and reason before they are combined, and the window they count in.
const AGGREGATE_AFTER: usize = 10;
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// The per-object token bucket.
const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// How many written events are remembered for counting repeats.
const REMEMBERED: usize = 4096;

/// Records events for one controller (`component`, e.g. `replicaset-controller`).
#[derive(Clone)]
pub struct Recorder {
    component: &'static str,
    tx: mpsc::Sender<Event>,
}

impl Recorder {
    /// Starts the recorder's writer (call inside the runtime).
    pub fn new(client: kube::Client, component: &'static str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(client, rx));
        Self { component, tx }
    }

    /// A `Normal` event about `obj`.
    pub fn normal<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, message: String) {
        self.record(obj, "Normal", reason, message);
    }

    /// A `Warning` event about `obj`.
    pub fn warning<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, message: String) {
        self.record(obj, "Warning", reason, message);
    }

    fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let ns = obj.namespace().unwrap_or_else(|| "default".into());
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: obj.meta().name.clone(),
                namespace: obj.namespace(),
                uid: obj.meta().uid.clone(),
                resource_version: obj.meta().resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(self.component.into()),
                host: None,
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: None::<MicroTime>,
            count: Some(1),
            reporting_component: Some(self.component.into()),
            reporting_instance: Some(self.component.into()),
            ..Default::default()
        };
        if self.tx.try_send(event).is_err() {
            tracing::debug!(reason, "event queue full, dropping an event");
        }
    }
}

/// A written event, for counting its repeats.
struct Written {
    name: String,
    count: i32,
    first: Option<Time>,
    used: Instant,
}

/// client-go's correlator state: token buckets, message sets per aggregate key, written events.
#[derive(Default)]
struct Correlator {
    buckets: HashMap<String, (f64, Instant)>,
    similar: HashMap<String, (HashSet<String>, Instant)>,
    written: HashMap<String, Written>,
}

/// What to do with an event: write it new, or bump the one already written.
enum Action {
    Create(Event),
    Bump {
        event: Event,
        name: String,
        key: String,
    },
}

fn object_key(e: &Event) -> String {
    let o = &e.involved_object;
    let source = e.source.as_ref().and_then(|s| s.component.as_deref());
    [
        source,
        o.kind.as_deref(),
        o.namespace.as_deref(),
        o.name.as_deref(),
        o.uid.as_deref(),
        o.api_version.as_deref(),
    ]
    .map(|s| s.unwrap_or(""))
    .join("\u{0}")
}

impl Correlator {
    /// `None` when the object's bucket is empty (the event is dropped).
    fn correlate(&mut self, mut event: Event, now: Instant) -> Option<Action> {
        let object = object_key(&event);
        let (tokens, at) = self.buckets.entry(object.clone()).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / REFILL_EVERY.as_secs_f64())
            .min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return None;
        }
        *tokens -= 1.0;
        let aggregate = [
            object.as_str(),
            event.type_.as_deref().unwrap_or(""),
            event.reason.as_deref().unwrap_or(""),
        ]
        .join("\u{0}");
        let message = event.message.clone().unwrap_or_default();
        let (messages, last) = self
            .similar
            .entry(aggregate.clone())
            .or_insert_with(|| (HashSet::new(), now));
        if now.duration_since(*last) > AGGREGATE_WINDOW {
            messages.clear();
        }
        *last = now;
        messages.insert(message.clone());
        let key = if messages.len() > AGGREGATE_AFTER {
            event.message = Some(format!("(combined from similar events): {message}"));
            aggregate
        } else {
            format!("{aggregate}\u{0}{message}")
        };
        match self.written.get_mut(&key) {
            Some(w) => {
                w.count += 1;
                w.used = now;
                event.count = Some(w.count);
                event.first_timestamp = w.first.clone();
                Some(Action::Bump {
                    event,
                    name: w.name.clone(),
                    key,
                })
            }
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let name = format!(
                    "{}.{nanos:x}",
                    event.involved_object.name.as_deref().unwrap_or("")
                );
                event.metadata.name = Some(name.clone());
                self.remember(key, name, &event, now);
                Some(Action::Create(event))
            }
        }
    }

    fn remember(&mut self, key: String, name: String, event: &Event, now: Instant) {
        if self.written.len() >= REMEMBERED
            && let Some(oldest) = self
                .written
                .iter()
                .min_by_key(|(_, w)| w.used)
                .map(|(k, _)| k.clone())
        {
            self.written.remove(&oldest);
        }
        // Buckets and message sets of quiet objects are dropped with them.
        if self.buckets.len() > REMEMBERED {
            self.buckets
                .retain(|_, (_, at)| now.duration_since(*at) < REFILL_EVERY * 25);
            self.similar
                .retain(|_, (_, at)| now.duration_since(*at) < AGGREGATE_WINDOW);
        }
        self.written.insert(
            key,
            Written {
                name,
                count: event.count.unwrap_or(1),
                first: event.first_timestamp.clone(),
                used: now,
            },
        );
    }
}

async fn write_events(client: kube::Client, mut rx: mpsc::Receiver<Event>) {
    let mut correlator = Correlator::default();
    while let Some(event) = rx.recv().await {
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        match correlator.correlate(event, Instant::now()) {
            None => {}
            Some(Action::Create(event)) => {
                if let Err(err) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(%err, "recording an event failed");
                }
            }
            Some(Action::Bump {
                mut event,
                name,
                key,
            }) => {
                let patch = json!({"count": event.count, "lastTimestamp": event.last_timestamp,
                    "message": event.message});
                let bumped = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                if bumped.is_err() {
                    // Gone meanwhile (TTL, deleted): written anew under a new name.
                    let fresh = format!("{name}.{:x}", event.count.unwrap_or(0));
                    event.metadata.name = Some(fresh.clone());
                    if let Some(w) = correlator.written.get_mut(&key) {
                        w.name = fresh;
                    }
                    if let Err(err) = api.create(&PostParams::default(), &event).await {
                        tracing::debug!(%err, "recording an event failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str) -> Event {
        Event {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some("p".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            reason: Some("Failed".into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            count: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn repeats_are_counted_on_the_first_event() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let Some(Action::Create(first)) = c.correlate(event("boom"), now) else {
            panic!("first is written")
        };
        let Some(Action::Bump { event, name, .. }) = c.correlate(event("boom"), now) else {
            panic!("the repeat bumps")
        };
        assert_eq!(Some(name), first.metadata.name);
        assert_eq!(event.count, Some(2));
        assert!(matches!(
            c.correlate(super::tests::event("other"), now),
            Some(Action::Create(_))
        ));
    }

    #[test]
    fn many_messages_are_combined_and_floods_are_cut() {
        let mut c = Correlator::default();
        let now = Instant::now();
        for i in 0..AGGREGATE_AFTER {
            assert!(matches!(
                c.correlate(event(&format!("m{i}")), now),
                Some(Action::Create(_))
            ));
        }
        let Some(Action::Create(combined)) = c.correlate(event("m-last"), now) else {
            panic!("combined")
        };
        assert_eq!(
            combined.message.as_deref(),
            Some("(combined from similar events): m-last")
        );
        assert!(matches!(
            c.correlate(event("m-again"), now),
            Some(Action::Bump { .. })
        ));
        // 25 at once, then nothing until the bucket refills.
        let mut written = AGGREGATE_AFTER + 2;
        while c.correlate(event("x"), now).is_some() {
            written += 1;
        }
        assert_eq!(written, 25);
        assert!(c.correlate(event("x"), now + REFILL_EVERY).is_some());
    }
}
