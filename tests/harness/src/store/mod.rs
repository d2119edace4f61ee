//! The versioned object store: objects as JSON keyed by resource, namespace and
//! name, one global resourceVersion counter, a bounded event history for watch.

mod persist;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::resources::ResourceType;

/// Changes still in history after a resourceVersion, plus a receiver for later ones.
type Backlog = (Vec<Arc<Change>>, broadcast::Receiver<Arc<Change>>);

/// Where an object lives: `res` is the qualified plural (`pods`, `statefulsets.apps`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub res: String,
    pub ns: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(rt: &ResourceType, ns: Option<&str>, name: &str) -> Self {
        ObjectKey {
            res: rt.qualified(),
            ns: ns.unwrap_or_default().to_string(),
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change, as watchers see it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ObjectKey,
    pub kind: EventType,
    pub obj: Value,
    /// The object before this change (for selector transitions in watch).
    pub prev: Option<Value>,
}

/// What a read-modify-write closure decided.
pub enum Mutation {
    Put(Value),
    Delete,
    Unchanged,
}

struct Inner {
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    log: Option<persist::Log>,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Change>>,
    history_cap: usize,
}

pub const DEFAULT_HISTORY: usize = 20_000;

impl Store {
    /// An in-memory store (tests).
    pub fn in_memory(history_cap: usize) -> Arc<Store> {
        Self::build(BTreeMap::new(), 0, None, history_cap)
    }

    /// A store persisted in `dir`; existing objects are loaded.
    pub fn open(dir: &Path, history_cap: usize) -> Result<Arc<Store>> {
        let (objects, rv, log) = persist::Log::open(dir)?;
        Ok(Self::build(objects, rv, Some(log), history_cap))
    }

    fn build(
        objects: BTreeMap<ObjectKey, Value>,
        rv: u64,
        log: Option<persist::Log>,
        history_cap: usize,
    ) -> Arc<Store> {
        let (tx, _) = broadcast::channel(16_384);
        Arc::new(Store {
            inner: Mutex::new(Inner {
                objects,
                rv,
                history: VecDeque::new(),
                oldest: rv,
                log,
            }),
            tx,
            history_cap: history_cap.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// All objects of one resource (optionally one namespace), with the store's resourceVersion.
    pub fn list(&self, res: &str, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Atomically reads the object at `key`, lets `f` decide, and commits the result
    /// with a new resourceVersion. Returns the stored object (or the deleted one).
    pub fn mutate<F>(&self, key: &ObjectKey, f: F) -> Result<Option<Value>>
    where
        F: FnOnce(Option<&Value>) -> Result<Mutation>,
    {
        let mut inner = self.lock();
        let prev = inner.objects.get(key).cloned();
        let kind = match f(prev.as_ref())? {
            Mutation::Unchanged => return Ok(prev),
            Mutation::Put(mut obj) => {
                let rv = inner.rv + 1;
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                (rv, Some(obj))
            }
            Mutation::Delete => {
                if prev.is_none() {
                    return Ok(None);
                }
                (inner.rv + 1, None)
            }
        };
        let (rv, new) = kind;
        inner.rv = rv;
        let inner = &mut *inner;
        let change = match &new {
            Some(obj) => {
                inner.objects.insert(key.clone(), obj.clone());
                let t = if prev.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                Change {
                    rv,
                    key: key.clone(),
                    kind: t,
                    obj: obj.clone(),
                    prev: prev.clone(),
                }
            }
            None => {
                inner.objects.remove(key);
                let mut obj = prev.clone().unwrap_or(Value::Null);
                obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
                Change {
                    rv,
                    key: key.clone(),
                    kind: EventType::Deleted,
                    obj,
                    prev: prev.clone(),
                }
            }
        };
        if let Some(log) = inner.log.as_mut() {
            log.append(rv, key, new.as_ref(), &inner.objects)?;
        }
        let change = Arc::new(change);
        inner.history.push_back(change.clone());
        while inner.history.len() > self.history_cap {
            if let Some(old) = inner.history.pop_front() {
                inner.oldest = old.rv;
            }
        }
        // Sent under the lock so that subscribe_from sees a gap-free sequence.
        let _ = self.tx.send(change);
        Ok(if new.is_some() {
            new
        } else {
            Some(prev.unwrap_or(Value::Null))
        })
    }

    /// Changes after `rv` still in history, plus a receiver for everything later.
    /// Errors with Gone when `rv` is older than the history reaches.
    pub fn subscribe_from(&self, rv: u64) -> Result<Backlog> {
        let inner = self.lock();
        if rv < inner.oldest {
            return Err(Error::Gone {
                requested: rv,
                oldest: inner.oldest,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|c| c.rv > rv)
            .cloned()
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// A receiver of every future change (controllers use this as a wake-up).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(n: &str) -> ObjectKey {
        ObjectKey {
            res: "configmaps".into(),
            ns: "default".into(),
            name: n.into(),
        }
    }

    #[test]
    fn versions_increase_and_history_expires() {
        let s = Store::in_memory(2);
        for i in 0..3 {
            s.mutate(&key(&format!("c{i}")), |_| {
                Ok(Mutation::Put(json!({"metadata": {}})))
            })
            .unwrap();
        }
        assert_eq!(s.current_rv(), 3);
        assert!(matches!(s.subscribe_from(0), Err(Error::Gone { .. })));
        let (backlog, _) = s.subscribe_from(1).unwrap();
        assert_eq!(backlog.iter().map(|c| c.rv).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn persisted_objects_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 10).unwrap();
            s.mutate(&key("a"), |_| {
                Ok(Mutation::Put(json!({"metadata": {"name": "a"}})))
            })
            .unwrap();
            s.mutate(&key("b"), |_| {
                Ok(Mutation::Put(json!({"metadata": {"name": "b"}})))
            })
            .unwrap();
            s.mutate(&key("a"), |_| Ok(Mutation::Delete)).unwrap();
        }
        let s = Store::open(dir.path(), 10).unwrap();
        assert!(s.get(&key("a")).is_none());
        assert_eq!(
            s.get(&key("b")).unwrap()["metadata"]["resourceVersion"],
            "2"
        );
        assert_eq!(s.current_rv(), 3);
    }
}
