//! Group commit for Raft log appends: one thread fsyncs the shared WAL once for
//! every append queued since the last fsync, across all groups on the node.

use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::IOFlushed;

use super::TypeConfig;
use crate::engine::Engine;

#[derive(Clone)]
pub struct WalSyncer {
    tx: mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl WalSyncer {
    pub fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // Weak: the engine closes when its owners drop it, not later on this detached
        // thread (a RocksDB still closing while the process exits aborts it).
        let engine = Arc::downgrade(&engine);
        std::thread::Builder::new()
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
        WalSyncer { tx }
    }

    /// Completes `cb` once every write issued before this call is durable.
    pub fn after_sync(&self, cb: IOFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(cb)) = self.tx.send(cb) {
            cb.io_completed(Err(std::io::Error::other("wal-sync thread stopped")));
        }
    }
}
