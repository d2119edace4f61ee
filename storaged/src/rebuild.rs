//! Rebuild traffic of this node: the rate limit and stream permits shared by every volume
//! snapshot it sends (`--rebuild-rate`, `--rebuild-concurrency`), and each stream's progress.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The default of `--rebuild-rate`: 100 MiB/s per node.
pub const DEFAULT_RATE: u64 = 100 << 20;

/// Parses a rate such as `100MiB`, `100MiB/s`, `1.5GiB` or `50000000` (bytes a second).
pub fn parse_rate(field: &str, s: &str) -> Result<u64, String> {
    let bare = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    let bytes = parse_size::parse_size(bare)
        .map_err(|e| format!("--{field} `{s}`: not a rate such as 100MiB ({e})"))?;
    if bytes == 0 {
        return Err(format!("--{field} `{s}`: must be greater than 0"));
    }
    Ok(bytes)
}

/// A pacer shared by concurrent senders: each `take` of n bytes is scheduled after the
/// bytes taken before it and returns once n / rate has passed since its turn came, so
/// any span of takes lasts at least their bytes / rate (no burst allowance).
pub struct RateLimit {
    bytes_per_sec: u64,
    /// When the bytes taken so far have been paid for.
    paid_until: Mutex<Option<Instant>>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            paid_until: Mutex::new(None),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` may go.
    pub async fn take(&self, bytes: u64) {
        let until = {
            let mut paid = self.paid_until.lock().expect("rate limit poisoned");
            let now = Instant::now();
            let turn = paid.map_or(now, |p| p.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            let until = turn + cost;
            *paid = Some(until);
            until
        };
        tokio::time::sleep_until(until).await;
    }
}

/// One outgoing snapshot stream's progress, as the group's leader reports it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of chunk data sent so far.
    pub copied: u64,
    /// What the stream will send in all: the volume's written bytes as estimated when it
    /// started, never less than `copied`.
    pub total: u64,
    /// Milliseconds since the stream started sending (waiting for a permit excluded).
    pub elapsed_ms: u64,
    /// The sending node's rate limit, bytes a second.
    pub rate: u64,
}

impl Progress {
    /// Percent done, 0 to 100.
    pub fn percent(&self) -> u32 {
        if self.total == 0 {
            return 100;
        }
        (self.copied.min(self.total) * 100 / self.total) as u32
    }

    /// Time left at the rate seen so far, or at the node's rate limit until a tenth is
    /// copied (the first pages are small and the first chunk page waits its turn).
    pub fn eta(&self) -> Option<Duration> {
        let left = self.remaining() as f64;
        let per_ms = if self.copied >= self.total / 10 && self.copied > 0 && self.elapsed_ms > 0 {
            self.copied as f64 / self.elapsed_ms as f64
        } else if self.rate > 0 {
            self.rate as f64 / 1000.0
        } else {
            return None;
        };
        Some(Duration::from_millis((left / per_ms).ceil() as u64))
    }

    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.copied)
    }
}

struct Entry {
    copied: u64,
    total: u64,
    started: Option<Instant>,
}

/// The node's rebuild budget and the progress of every volume snapshot it is sending.
pub struct Rebuilds {
    rate: RateLimit,
    permits: Arc<Semaphore>,
    /// By (group, target, sequence): a retried stream may start before the last one's
    /// guard is dropped.
    streams: Mutex<BTreeMap<(u64, u64, u64), Entry>>,
    seq: std::sync::atomic::AtomicU64,
}

impl Rebuilds {
    /// `bytes_per_sec` shared by every stream, at most `concurrency` streams at once.
    pub fn new(bytes_per_sec: u64, concurrency: usize) -> Arc<Self> {
        Arc::new(Rebuilds {
            rate: RateLimit::new(bytes_per_sec),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            streams: Mutex::default(),
            seq: Default::default(),
        })
    }

    /// Registers a stream of `group`'s snapshot to node `target` (shown at 0 % while it
    /// waits), then waits for a permit. The stream's progress lasts as long as the guard.
    pub async fn begin(self: &Arc<Self>, group: u64, target: u64, total: u64) -> Stream {
        let key = (
            group,
            target,
            self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        self.lock().insert(
            key,
            Entry {
                copied: 0,
                total,
                started: None,
            },
        );
        let mut stream = Stream {
            rebuilds: self.clone(),
            key,
            _permit: None,
        };
        let permit = self.permits.clone().acquire_owned().await.ok();
        stream._permit = permit;
        if let Some(e) = self.lock().get_mut(&key) {
            e.started = Some(Instant::now());
        }
        stream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64, u64), Entry>> {
        self.streams.lock().expect("rebuild progress poisoned")
    }

    /// The progress of every stream of `group`, by target node.
    pub fn of_group(&self, group: u64) -> BTreeMap<u64, Progress> {
        self.lock()
            .range((group, 0, 0)..=(group, u64::MAX, u64::MAX))
            .map(|((_, target, _), e)| {
                let p = Progress {
                    copied: e.copied,
                    total: e.total.max(e.copied),
                    elapsed_ms: e.started.map_or(0, |s| s.elapsed().as_millis() as u64),
                    rate: self.rate.bytes_per_sec(),
                };
                (*target, p)
            })
            .collect()
    }

    /// Bytes still to send, by group, over every stream in flight.
    pub fn remaining(&self) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        for ((group, _, _), e) in self.lock().iter() {
            *out.entry(*group).or_default() += e.total.saturating_sub(e.copied);
        }
        out
    }
}

/// One stream's hold on the budget: its permit and its progress entry, both released
/// when it is dropped (finished, failed or cancelled).
pub struct Stream {
    rebuilds: Arc<Rebuilds>,
    key: (u64, u64, u64),
    _permit: Option<OwnedSemaphorePermit>,
}

impl Stream {
    /// Waits for the rate limit to let `bytes` go, then counts them as sent.
    pub async fn send(&self, bytes: u64) {
        self.rebuilds.rate.take(bytes).await;
        if let Some(e) = self.rebuilds.lock().get_mut(&self.key) {
            e.copied += bytes;
        }
    }
}

impl Stream {
    /// Counts `bytes` the target already held as copied (they are not sent, nor paced).
    pub fn skipped(&self, bytes: u64) {
        if bytes > 0
            && let Some(e) = self.rebuilds.lock().get_mut(&self.key)
        {
            e.copied += bytes;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.rebuilds.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units_and_bad_ones_name_the_flag() {
        assert_eq!(parse_rate("rebuild-rate", "100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_rate("rebuild-rate", "2MiB/s").unwrap(), 2 << 20);
        assert_eq!(parse_rate("rebuild-rate", "1000").unwrap(), 1000);
        for bad in ["", "fast", "0", "-5MiB", "0MiB/s"] {
            let e = parse_rate("rebuild-rate", bad).unwrap_err();
            assert!(e.starts_with("--rebuild-rate"), "{bad}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_takers_share_the_rate() {
        let rate = Arc::new(RateLimit::new(4 << 20));
        let started = Instant::now();
        // Two senders of 10 pages of 1 MiB: 20 MiB at 4 MiB/s take 5 s between them.
        let sender = |rate: Arc<RateLimit>| async move {
            for _ in 0..10 {
                rate.take(1 << 20).await;
            }
        };
        tokio::join!(sender(rate.clone()), sender(rate.clone()));
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(5), "{took:?}");
        assert!(took < Duration::from_millis(5_100), "{took:?}");
        // Idle time is not banked as a burst: after a pause, a page still waits its turn.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let again = Instant::now();
        rate.take(2 << 20).await;
        assert!(again.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn streams_report_progress_and_wait_for_a_permit() {
        let r = Rebuilds::new(1 << 20, 1);
        let first = r.begin(7, 4, 3 << 20).await;
        // Before a tenth is copied, the ETA is at the node's rate.
        assert_eq!(r.of_group(7)[&4].eta(), Some(Duration::from_secs(3)));
        first.send(1 << 20).await;
        let p = r.of_group(7)[&4];
        assert_eq!((p.copied, p.total, p.percent()), (1 << 20, 3 << 20, 33));
        assert_eq!(p.eta(), Some(Duration::from_secs(2)));
        assert_eq!(r.remaining()[&7], 2 << 20);
        // Bytes the target already held (a resumed transfer) count as copied at once.
        let before = Instant::now();
        first.skipped(1 << 20);
        assert_eq!(
            before.elapsed(),
            Duration::ZERO,
            "skipped bytes are not paced"
        );
        assert_eq!(r.of_group(7)[&4].percent(), 66);
        assert_eq!(r.remaining()[&7], 1 << 20);
        // A second stream is listed at 0 % but waits until the first one ends.
        let r2 = r.clone();
        let second = tokio::spawn(async move { r2.begin(8, 5, 10).await });
        tokio::task::yield_now().await;
        assert_eq!(r.of_group(8)[&5].copied, 0);
        assert!(!second.is_finished());
        drop(first);
        assert!(r.of_group(7).is_empty());
        let second = second.await.unwrap();
        second.send(10).await;
        assert_eq!(r.of_group(8)[&5].percent(), 100);
        drop(second);
        assert!(r.remaining().is_empty());
    }
}
