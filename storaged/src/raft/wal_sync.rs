//! Group commit for Raft log appends: one thread fsyncs the value log and the shared WAL
//! once for every append queued since the last fsync, across all groups on the node.

use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::IOFlushed;

use super::TypeConfig;
use crate::engine::{Batch, Cf, Engine, vlog};

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

/// Makes every earlier append durable: the value log's segments and RocksDB's WAL, the
/// two fsyncs at once (the value log's on `values`). The WAL also records the value log's
/// position that the previous round made durable, so after a crash only entries past it
/// need checking (`LogStore::drop_torn_tail`).
fn sync_both(engine: &Arc<dyn Engine>, values: &ValueSyncThread) -> crate::Result<()> {
    let Some(vl) = engine.value_log() else {
        return engine.sync_wal();
    };
    let mut b = Batch::default();
    b.put(
        Cf::RaftState,
        vlog::synced_key(),
        vl.synced_position().to_le_bytes().to_vec(),
    );
    engine.write(b, false)?;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let asked = values.tx.send((engine.clone(), done_tx)).is_ok();
    let wal = engine.sync_wal();
    let values = match asked.then(|| done_rx.recv().ok()).flatten() {
        Some(r) => r,
        None => Err(crate::Error::Internal(
            "value log sync thread stopped".into(),
        )),
    };
    wal.and(values)
}

type ValueSyncJob = (Arc<dyn Engine>, mpsc::SyncSender<crate::Result<()>>);

/// The thread that fsyncs the value log while the wal-sync thread fsyncs the WAL; it
/// ends (and is joined) with the wal-sync thread.
struct ValueSyncThread {
    tx: mpsc::Sender<ValueSyncJob>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ValueSyncThread {
    fn start() -> Self {
        let (tx, rx) = mpsc::channel::<ValueSyncJob>();
        let thread = std::thread::Builder::new()
            .name("vlog-sync".into())
            .spawn(move || {
                while let Ok((engine, done)) = rx.recv() {
                    let r = match engine.value_log() {
                        Some(vl) => vl.sync(),
                        None => Ok(()),
                    };
                    drop(engine);
                    let _ = done.send(r);
                }
            })
            .expect("spawn vlog-sync thread");
        ValueSyncThread {
            tx,
            thread: Some(thread),
        }
    }
}

impl Drop for ValueSyncThread {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
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
                let values = ValueSyncThread::start();
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let res = match engine.upgrade() {
                        Some(e) => sync_both(&e, &values).map_err(|e| e.to_string()),
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
