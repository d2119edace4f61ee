//! Group commit for Raft log appends: one thread fsyncs the shared WAL once for
//! every append queued since the last fsync, across all groups on the node.

use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::IOFlushed;

use super::TypeConfig;
use crate::engine::Engine;

#[derive(Clone)]
pub struct WalSyncer {
    inner: Arc<Inner>,
}

/// The thread and its queue; the last syncer handle to go stops the thread and waits
/// for it, so it never outlives the node (nor syncs a closing engine at exit).
struct Inner {
    tx: Option<mpsc::Sender<IOFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WalSyncer {
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // Weak: the engine closes when its owners drop it, not on this thread.
        let engine = Arc::downgrade(&engine);
        let thread = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let res = match engine.upgrade() {
                        Some(e) => e.sync_wal().map_err(|e| e.to_string()),
                        None => Err("the storage engine is closed".to_string()),
                    };
                    for cb in waiting {
                        cb.io_completed(res.clone().map_err(std::io::Error::other));
                    }
                }
            })
            .expect("spawn wal-sync thread");
        WalSyncer {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
            }),
        }
    }

    /// Completes `cb` once every write issued before this call is durable.
    pub fn after_sync(&self, cb: IOFlushed<TypeConfig>) {
        let tx = self
            .inner
            .tx
            .as_ref()
            .expect("set until the last handle drops");
        if let Err(mpsc::SendError(cb)) = tx.send(cb) {
            cb.io_completed(Err(std::io::Error::other("wal-sync thread stopped")));
        }
    }
}
