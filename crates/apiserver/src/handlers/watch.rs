//! WATCH: newline-delimited JSON events over a chunked response, flushed per event, with upstream's
//! `resourceVersion` semantics, selector transitions, bookmarks, `timeoutSeconds` and 410 on compaction.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Response, header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::list::{ListOptions, read_list};
use super::{Body, Target, to_output};
use crate::api::Api;
use crate::status::ApiError;
use crate::storage::WatchMessage;
use crate::watchcache::{Decoded, Next, Subscription};

/// Upstream's default watch length when the client gives no `timeoutSeconds` (`--min-request-timeout`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Sink {
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    /// Objects go out as one-row Tables (`kubectl get -w`).
    table: Option<(
        std::sync::Arc<crate::resources::ResourceInfo>,
        crate::printers::Include,
    )>,
}

impl Sink {
    /// Sends one event; false when the client has gone.
    async fn send(&self, kind: &str, object: &Value) -> bool {
        self.send_line(self.line(kind, object)).await
    }

    /// One event's line as this watcher shows it (a one-row Table for `kubectl get -w`).
    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let tabled;
        let object = match &self.table {
            Some((info, include)) if matches!(kind, "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = object["metadata"]["resourceVersion"].clone();
                let meta = json!({"resourceVersion": rv});
                tabled =
                    crate::printers::table_for(info, std::slice::from_ref(object), meta, *include);
                &tabled
            }
            _ => object,
        };
        event_line(kind, object)
    }

    /// A storage event's line as this watcher sees it; `shared` is the event when its type is the storage
    /// event's own, so the serialized line is made once for every watcher.
    fn line_for(&self, kind: &str, object: &Value, shared: Option<&Arc<Decoded>>) -> Bytes {
        match shared {
            Some(ev) if self.table.is_none() => {
                ev.line.get_or_init(|| event_line(kind, object)).clone()
            }
            _ => self.line(kind, object),
        }
    }

    async fn send_line(&self, line: Bytes) -> bool {
        self.tx.send(Ok(Frame::data(line))).await.is_ok()
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(kind: &str, api_version: &str, rev: i64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": kind, "apiVersion": api_version, "metadata": meta})
}

pub async fn watch(api: &Api, target: &Target) -> Result<Response<Body>, ApiError> {
    let mut opts = ListOptions::parse(target, true)?;
    let q = &target.query;
    let send_initial = q.get("sendInitialEvents").map(|v| v == "true");
    if send_initial.is_some() && opts.resource_version_match.as_deref() != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions",
            "meta.k8s.io",
            "",
            vec![crate::status::Cause::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )],
        ));
    }
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = match q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()) {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => DEFAULT_TIMEOUT,
    };
    let rv: i64 = opts
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let prefix = match target.req.name.as_deref() {
        Some(name) => target.info.key(target.namespace(), name),
        None => target.info.list_prefix(target.namespace()),
    };
    let exact = target.req.name.is_some();
    // Initial state: `sendInitialEvents=true`, or a watch from "" / "0" (synthetic ADDED events).
    let initial = send_initial.unwrap_or(rv == 0);
    let mut initial_items = Vec::new();
    let start = if initial {
        opts.limit = 0;
        opts.continue_token = None;
        opts.resource_version_match = None;
        let listed = if exact {
            // One range read gives the object and the revision it was read at.
            let end = format!("{prefix}\u{0}");
            let page = api
                .storage
                .range(prefix.as_bytes(), end.as_bytes(), 0, 0)
                .await?;
            let mut items = Vec::new();
            if let Some(s) = page.items.first() {
                let o = to_output(s)?;
                if opts.matches(&o) {
                    items.push(o);
                }
            }
            (items, page.revision)
        } else {
            let l = read_list(api, &prefix, &opts).await?;
            (l.items, l.revision)
        };
        initial_items = listed.0;
        listed.1.max(rv)
    } else {
        rv
    };
    // Collection watches share the resource's watch cache; named watches and watchers starting further
    // back than the cache holds get a watch of their own.
    let mut source = if exact {
        None
    } else {
        api.watch_cache
            .subscribe(&api.storage, &target.info.list_prefix(None), start)
            .await
            .map(|sub| Source::Cache(sub, prefix.clone()))
    };
    if source.is_none() {
        let watch = api
            .storage
            .watch(&prefix, exact, start + 1)
            .await
            .map_err(ApiError::from)?;
        source = Some(Source::Etcd(watch));
    }
    let Some(mut source) = source else {
        return Err(ApiError::internal("no watch source"));
    };

    let (tx, rx) = mpsc::channel(64);
    let target_kind = target.info.kind.clone();
    let sink = Sink {
        tx,
        table: target.table.map(|include| (target.info.clone(), include)),
    };
    let api_version = target.info.api_version();
    let bookmark_obj = {
        let kind = target_kind.clone();
        move |rev: i64, end: bool| bookmark(&kind, &api_version, rev, end)
    };
    let metrics = api.metrics.clone();
    tokio::spawn(async move {
        metrics.watchers(&target_kind, 1);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        'serve: {
            for item in &initial_items {
                if !sink.send("ADDED", item).await {
                    break 'serve;
                }
            }
            if send_initial == Some(true)
                && bookmarks
                && !sink.send("BOOKMARK", &bookmark_obj(start, true)).await
            {
                break 'serve;
            }
            loop {
                let msg = tokio::select! {
                    _ = &mut deadline => break 'serve,
                    _ = sink.tx.closed() => break 'serve,
                    m = source.next() => m,
                };
                match msg {
                    Next::Events(events) => {
                        // Events that arrived together go out in one write.
                        let mut lines = Vec::with_capacity(events.len());
                        for ev in &events {
                            if let Some((kind, obj, natural)) = translate(&opts, ev) {
                                lines.push(sink.line_for(kind, &obj, natural.then_some(ev)));
                            }
                        }
                        let chunk = match lines.len() {
                            0 => continue,
                            1 => lines.pop().unwrap_or_default(),
                            _ => Bytes::from(lines.concat()),
                        };
                        if !sink.send_line(chunk).await {
                            break 'serve;
                        }
                    }
                    Next::Progress(rev) => {
                        if bookmarks && !sink.send("BOOKMARK", &bookmark_obj(rev, false)).await {
                            break 'serve;
                        }
                    }
                    Next::Compacted(compacted) => {
                        tracing::info!(kind = %target_kind, from = start, compacted, "watch from a compacted revision: 410 Expired, the client relists");
                        let err = ApiError::expired(format!(
                            "too old resource version: {start} ({compacted})"
                        ));
                        sink.send("ERROR", &err.to_status()).await;
                        break 'serve;
                    }
                    Next::End => break 'serve,
                    Next::Error(err) => {
                        tracing::debug!(%err, "watch ended");
                        let err = ApiError::internal(err);
                        sink.send("ERROR", &err.to_status()).await;
                        break 'serve;
                    }
                }
            }
        }
        metrics.watchers(&target_kind, -1);
    });
    let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Where a watch's events come from.
enum Source {
    /// The resource's watch cache, narrowed to a key prefix (a namespace, or everything).
    Cache(Subscription, String),
    /// A watch of its own on etcd.
    Etcd(crate::storage::Watch),
}

impl Source {
    async fn next(&mut self) -> Next {
        match self {
            Source::Cache(sub, prefix) => loop {
                match sub.next().await {
                    Next::Events(events) => {
                        let mine: Vec<_> = events
                            .into_iter()
                            .filter(|e| e.key.starts_with(prefix.as_str()))
                            .collect();
                        if !mine.is_empty() {
                            return Next::Events(mine);
                        }
                    }
                    other => return other,
                }
            },
            Source::Etcd(watch) => match watch.next().await {
                Ok(Some(WatchMessage::Events(events))) => Next::Events(
                    events
                        .into_iter()
                        .filter_map(Decoded::from_event)
                        .map(Arc::new)
                        .collect(),
                ),
                Ok(Some(WatchMessage::Progress(rev))) => Next::Progress(rev),
                Ok(Some(WatchMessage::Compacted(rev))) => Next::Compacted(rev),
                Ok(None) => Next::End,
                Err(err) => Next::Error(err.to_string()),
            },
        }
    }
}

/// Maps a storage event to a watch event for this watcher's selectors; `true` when the event type is the
/// storage event's own (so the shared serialized line can be used).
fn translate(opts: &ListOptions, ev: &Decoded) -> Option<(&'static str, Arc<Value>, bool)> {
    if let Some(info) = &opts.serve {
        // Another version of the stored kind: convert, and never share the stored form's line.
        let serve = |o: &Arc<Value>| Arc::new(crate::convert::to_served_form(info, (**o).clone()));
        let converted = Decoded {
            key: ev.key.clone(),
            revision: ev.revision,
            object: ev.object.as_ref().map(serve),
            previous: ev.previous.as_ref().map(serve),
            deleted: ev.deleted,
            line: std::sync::OnceLock::new(),
        };
        let mut opts_plain = opts.clone_selectors();
        opts_plain.serve = None;
        return translate(&opts_plain, &converted).map(|(kind, obj, _)| (kind, obj, false));
    }
    let obj = ev.object.clone()?;
    if ev.deleted {
        return opts.matches(&obj).then_some(("DELETED", obj, true));
    }
    let now = opts.matches(&obj);
    let before = ev.previous.as_ref().is_some_and(|p| opts.matches(p));
    let natural = if ev.previous.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    match (before, now) {
        (false, true) => Some(("ADDED", obj, natural == "ADDED")),
        (true, true) => Some(("MODIFIED", obj, true)),
        (true, false) => Some(("DELETED", obj, false)),
        (false, false) => None,
    }
}
