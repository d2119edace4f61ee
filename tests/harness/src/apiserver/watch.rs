//! Watch over HTTP: WatchEvents (newline-delimited JSON, or length-prefixed protobuf frames)
//! resumed from a resourceVersion, with initial events, bookmarks, selector transitions
//! and 410 on expiry.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::negotiate::Format;
use super::{protobuf_encode, table};
use crate::error::Error;
use crate::registry::Registry;
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::resources::{self, ResourceType};
use crate::store::{Change, EventType};

pub struct WatchParams {
    pub rt: ResourceType,
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub as_table: bool,
    /// A custom type's printer columns (None for built-in types).
    pub columns: Option<Vec<Value>>,
    pub bookmark_interval: Duration,
    /// JSON lines, or protobuf frames (decision 065).
    pub format: Format,
}

impl WatchParams {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    fn wrap(&self, obj: &Value) -> Value {
        if self.as_table {
            match &self.columns {
                Some(c) => table::custom_table(c, std::slice::from_ref(obj), 0),
                None => table::table(&self.rt, std::slice::from_ref(obj), 0),
            }
        } else if !resources::is_builtin(&self.rt) {
            // A custom object is seen in the version watched (conversion None).
            let mut o = obj.clone();
            o["apiVersion"] = json!(self.rt.api_version());
            o
        } else {
            obj.clone()
        }
    }

    /// What a change looks like to this watcher, if anything.
    fn translate(&self, c: &Change) -> Option<(&'static str, Value)> {
        if c.key.res != self.rt.qualified() || self.ns.as_deref().is_some_and(|n| n != c.key.ns) {
            return None;
        }
        let now = self.matches(&c.obj);
        let before = c.prev.as_ref().is_some_and(|p| self.matches(p));
        let t = match (c.kind, before, now) {
            (EventType::Deleted, _, true) => "DELETED",
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some((t, self.wrap(&c.obj)))
    }
}

/// One event in the watch's format; an object protobuf cannot carry becomes an ERROR event.
fn line(format: Format, t: &str, obj: &Value) -> Bytes {
    if format == Format::Protobuf {
        return protobuf_encode::watch_frame(t, obj).unwrap_or_else(|e| {
            tracing::error!(error = %e, kind = %obj["kind"], "cannot encode a watch event in protobuf");
            protobuf_encode::watch_frame("ERROR", &e.to_status()).unwrap_or_default()
        });
    }
    let mut v = serde_json::to_vec(&json!({"type": t, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(format: Format, rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        format,
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
    )
}

fn expired(format: Format, e: &Error) -> Bytes {
    let mut status = e.to_status();
    status["code"] = json!(410);
    status["reason"] = json!("Expired");
    line(format, "ERROR", &status)
}

/// Starts a watch; the body streams until timeout, expiry or client disconnect.
pub fn start(registry: Arc<Registry>, p: WatchParams) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        let _ = run(registry, p, &tx).await;
    });
    Body::from_stream(ReceiverStream::new(rx))
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn send(tx: &Tx, b: Bytes) -> Result<(), ()> {
    tx.send(Ok(b)).await.map_err(|_| ())
}

async fn run(registry: Arc<Registry>, p: WatchParams, tx: &Tx) -> Result<(), ()> {
    let store = registry.store().clone();
    let requested: Option<u64> = p
        .resource_version
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    let initial = p.send_initial_events || matches!(requested, None | Some(0));
    let (start_rv, initial_items) = if initial {
        let (items, rv) = registry.list(&p.rt, p.ns.as_deref(), &p.labels, &p.fields);
        (rv, items)
    } else {
        (requested.unwrap_or(0), Vec::new())
    };
    let (backlog, mut rx) = match store.subscribe_from(start_rv) {
        Ok(x) => x,
        Err(e) => return send(tx, expired(p.format, &e)).await,
    };
    for item in &initial_items {
        send(tx, line(p.format, "ADDED", &p.wrap(item))).await?;
    }
    let mut last_rv = start_rv;
    for c in backlog {
        last_rv = c.rv;
        if let Some((t, obj)) = p.translate(&c) {
            send(tx, line(p.format, t, &obj)).await?;
        }
    }
    if p.send_initial_events && p.bookmarks {
        send(tx, bookmark(p.format, &p.rt, last_rv, true)).await?;
    }
    let deadline = tokio::time::sleep(p.timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(p.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            _ = tx.closed() => return Ok(()),
            _ = ticker.tick(), if p.bookmarks => {
                send(tx, bookmark(p.format, &p.rt, last_rv, false)).await?;
            }
            msg = rx.recv() => match msg {
                Ok(c) => {
                    if c.rv <= last_rv {
                        continue;
                    }
                    last_rv = c.rv;
                    if let Some((t, obj)) = p.translate(&c) {
                        send(tx, line(p.format, t, &obj)).await?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = Error::Gone { requested: last_rv, oldest: store.current_rv() };
                    return send(tx, expired(p.format, &e)).await;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}
