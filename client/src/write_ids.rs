//! Writer identities for exactly-once block writes: one random client id, and per volume
//! increasing sequence numbers with the lowest one whose outcome is still unknown.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// How far a writer's newest sequence number may run ahead of its oldest unfinished one
/// on a volume. storaged keeps at most this many applied sequence numbers per writer and
/// volume; a new write waits while an older one is still in flight this far behind.
pub const SEQ_WINDOW: u64 = 1024;

/// Hands out write identities: (client id, seq, first incomplete) per logical write.
pub struct WriteIds {
    client: u64,
    volumes: Mutex<HashMap<String, Arc<Seqs>>>,
}

/// One volume's sequence numbers.
#[derive(Default)]
struct Seqs {
    state: Mutex<SeqState>,
    finished: Notify,
}

#[derive(Default)]
struct SeqState {
    /// The next sequence number to hand out (the first is 1).
    next: u64,
    /// Sequence numbers handed out whose ticket is not dropped yet.
    in_flight: BTreeSet<u64>,
}

/// One logical write's identity, reused by every resend; dropping it declares the write
/// finished (its outcome known to the caller, or given up on), so it is never sent again.
pub struct WriteTicket {
    seqs: Arc<Seqs>,
    client: u64,
    seq: u64,
}

impl WriteTicket {
    pub fn client_id(&self) -> u64 {
        self.client
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The lowest sequence number still in flight on this volume (at most `seq`), as of now:
    /// sent with every attempt, so a resend carries the newest low-water mark.
    pub fn first_incomplete(&self) -> u64 {
        let st = self.seqs.state.lock().expect("write ids poisoned");
        st.in_flight.first().copied().unwrap_or(self.seq)
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.seqs
            .state
            .lock()
            .expect("write ids poisoned")
            .in_flight
            .remove(&self.seq);
        self.seqs.finished.notify_waiters();
    }
}

/// A random non-zero id (std's per-process random hash keys, mixed with the time and pid).
fn random_id() -> u64 {
    loop {
        let mut h = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        let id = h.finish();
        if id != 0 {
            return id;
        }
    }
}

impl Default for WriteIds {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteIds {
    /// A new writer, with a random client id.
    pub fn new() -> Self {
        WriteIds {
            client: random_id(),
            volumes: Mutex::new(HashMap::new()),
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client
    }

    /// The identity of a new logical write to `volume`; waits while the volume's oldest
    /// write in flight is `SEQ_WINDOW` sequence numbers behind.
    pub async fn begin(&self, volume: &str) -> WriteTicket {
        let seqs = self
            .volumes
            .lock()
            .expect("write ids poisoned")
            .entry(volume.to_string())
            .or_default()
            .clone();
        loop {
            let finished = seqs.finished.notified();
            tokio::pin!(finished);
            // Registered before the check, so a ticket dropped in between still wakes us.
            finished.as_mut().enable();
            {
                let mut st = seqs.state.lock().expect("write ids poisoned");
                let next = st.next.max(1);
                if st
                    .in_flight
                    .first()
                    .is_none_or(|&oldest| next - oldest < SEQ_WINDOW)
                {
                    st.next = next + 1;
                    st.in_flight.insert(next);
                    return WriteTicket {
                        seqs: seqs.clone(),
                        client: self.client,
                        seq: next,
                    };
                }
            }
            finished.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn seqs_increase_per_volume_and_the_low_water_follows_the_oldest_in_flight() {
        let ids = WriteIds::new();
        assert_ne!(ids.client_id(), 0);
        assert_ne!(ids.client_id(), WriteIds::new().client_id());
        let a1 = ids.begin("a").await;
        let a2 = ids.begin("a").await;
        let b1 = ids.begin("b").await;
        assert_eq!((a1.seq(), a2.seq(), b1.seq()), (1, 2, 1));
        assert_eq!(a2.client_id(), ids.client_id());
        assert_eq!(a2.first_incomplete(), 1);
        drop(a1);
        assert_eq!(a2.first_incomplete(), 2);
        let a3 = ids.begin("a").await;
        drop(a2);
        assert_eq!(a3.first_incomplete(), 3);
        assert_eq!(b1.first_incomplete(), 1);
    }

    #[tokio::test]
    async fn a_write_waits_while_the_oldest_in_flight_is_a_window_behind() {
        let ids = WriteIds::new();
        let oldest = ids.begin("v").await;
        for _ in 1..SEQ_WINDOW {
            // Finished at once: only the oldest stays in flight.
            drop(ids.begin("v").await);
        }
        let mut next = Box::pin(ids.begin("v"));
        assert!(
            (&mut next).now_or_never().is_none(),
            "a window ahead: waits"
        );
        // Another volume is not held up.
        assert_eq!(ids.begin("w").await.seq(), 1);
        drop(oldest);
        let t = next.now_or_never().expect("the oldest finished: goes on");
        assert_eq!(t.seq(), SEQ_WINDOW + 1);
        assert_eq!(t.first_incomplete(), SEQ_WINDOW + 1);
    }
}
