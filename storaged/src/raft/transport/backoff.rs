//! Reachability of one peer node, shared by every group that talks to it: a peer that
//! fails is retried after a bounded, jittered exponential backoff, never in a loop.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// The first retry delay after a failure; it doubles with each further failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(50);
/// The longest delay between two attempts to reach a failed peer.
pub const CEILING: Duration = Duration::from_secs(2);
/// An attempt dropped unfinished after this long (openraft gave up on it at its
/// heartbeat timeout, 100 ms) counts as a failure: a paused peer never answers.
const ABANDONED_AFTER: Duration = Duration::from_millis(80);
/// A backoff ended early because the peer was heard from (`PeerHealth::heard_from`) ends
/// early again only after this long: a peer whose packets reach us while ours are lost to
/// it (a one-way loss) is retried at most this often, not once per message it sends.
pub const HEARD_FROM_EVERY: Duration = Duration::from_millis(500);

/// The delay before retry number `failures` (1 = after the first failure), before jitter.
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(CEILING)
}

/// `d` scaled by a random factor in [0.8, 1.2), so peers retried together spread out.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// An infinite series of jittered retry delays, for openraft's own replication backoff.
pub fn series() -> impl Iterator<Item = Duration> + Send + 'static {
    (1u32..).map(|n| jittered(delay(n)))
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every success and every counted failure: an attempt that started
    /// before either is stale, and its failure is not counted again.
    generation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    /// When a message from the peer last ended a backoff early.
    heard_at: Option<Instant>,
}

/// One peer's reachability: whether to try it now, and when next if not.
#[derive(Debug)]
pub struct PeerHealth {
    addr: String,
    state: Mutex<State>,
    /// Wakes the callers waiting out a backoff that ended early (`heard_from`).
    woken: tokio::sync::Notify,
    /// Failures counted so far: a channel dialled before the last one is dialled anew
    /// (`ChannelCache`), since its TCP connection may be stuck behind retransmissions
    /// that back off for seconds after a partition heals.
    failed_total: std::sync::atomic::AtomicU64,
}

impl PeerHealth {
    pub fn new(addr: &str) -> Self {
        PeerHealth {
            addr: addr.to_string(),
            state: Mutex::default(),
            woken: tokio::sync::Notify::new(),
            failed_total: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many failures were counted so far (see `failed_total`).
    pub fn failed_total(&self) -> u64 {
        self.failed_total.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("peer health lock poisoned")
    }

    /// When the next attempt may go, if the peer is backing off now.
    pub fn backing_off(&self) -> Option<Instant> {
        self.lock().retry_at.filter(|t| *t > Instant::now())
    }

    /// Waits until the peer may be tried (at once when it is not backing off).
    pub async fn ready(&self) {
        loop {
            let woken = self.woken.notified();
            tokio::pin!(woken);
            // Registered before the check, so a `heard_from` in between is not missed.
            woken.as_mut().enable();
            let Some(at) = self.backing_off() else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = woken => {}
            }
        }
    }

    /// The peer sent this node a Raft message: it is up and its packets get here, so a
    /// backoff toward it ends now (a healed partition resumes at once rather than after up
    /// to `CEILING`), at most once per `HEARD_FROM_EVERY`. The failure count stays: if the
    /// peer still cannot be reached, the next wait is as long as it would have been.
    /// Whether a backoff ended (the caller then ends openraft's own for that peer).
    pub fn heard_from(&self) -> bool {
        let now = Instant::now();
        let failures = {
            let mut s = self.lock();
            let waiting = s.retry_at.is_some_and(|t| t > now);
            let recently = s.heard_at.is_some_and(|t| now < t + HEARD_FROM_EVERY);
            if !waiting || recently {
                return false;
            }
            s.retry_at = None;
            s.heard_at = Some(now);
            s.failures
        };
        self.woken.notify_waiters();
        tracing::debug!(peer = %self.addr, failures, "peer heard from: backoff toward it ended");
        true
    }

    /// Starts an attempt; its outcome is reported through the returned guard.
    pub fn attempt(&self) -> Attempt<'_> {
        Attempt {
            health: self,
            generation: self.lock().generation,
            started: Instant::now(),
            done: false,
        }
    }

    /// The peer answered outside of an `Attempt` (a reply on an open stream).
    pub fn answered(&self) {
        self.succeeded();
    }

    /// The peer stopped answering outside of an `Attempt` (an open stream's reply
    /// overdue, or the stream cut).
    pub fn no_answer(&self, why: &str) {
        self.attempt().failed(why);
    }

    fn succeeded(&self) {
        let mut s = self.lock();
        s.generation += 1;
        if s.failures > 0 {
            tracing::info!(peer = %self.addr, failures = s.failures, "peer reachable again");
            s.failures = 0;
            s.retry_at = None;
        }
    }

    fn failed(&self, generation: u64, why: &str) {
        let mut s = self.lock();
        // Attempts made at the same time as this one (one per group) fail together:
        // count them once.
        if s.generation != generation {
            return;
        }
        s.generation += 1;
        s.failures = s.failures.saturating_add(1);
        self.failed_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wait = jittered(delay(s.failures));
        s.retry_at = Some(Instant::now() + wait);
        if s.failures == 1 {
            tracing::info!(peer = %self.addr, error = why, "peer unreachable: backing off");
        } else {
            tracing::debug!(peer = %self.addr, failures = s.failures, ?wait, error = why, "peer still unreachable");
        }
    }
}

/// One group's refused attempts to open an append stream to a peer that answers but does
/// not take the group (it does not host it, e.g. it failed to open there, or its Raft
/// stopped): the next open waits, jittered and doubling from 50 ms to 2 s. openraft's own
/// backoff cannot pace these: it sleeps only between requests it hands to a stream, and a
/// refused open takes none, so the leader would reopen at once, in a loop.
#[derive(Debug, Default)]
pub struct Refusals {
    count: u32,
    until: Option<Instant>,
}

impl Refusals {
    pub fn refused(&mut self) {
        self.count = self.count.saturating_add(1);
        self.until = Some(Instant::now() + jittered(delay(self.count)));
    }

    pub fn accepted(&mut self) {
        self.count = 0;
        self.until = None;
    }

    /// Waits until the next open may go (at once after an accepted one).
    pub async fn wait(&self) {
        if let Some(at) = self.until {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// One attempt to reach a peer. A peer that answered at all (even with an error of its
/// own) is reachable; a transport failure or no answer in time is not. An attempt
/// dropped unfinished after `ABANDONED_AFTER` counts as no answer.
pub struct Attempt<'a> {
    health: &'a PeerHealth,
    generation: u64,
    started: Instant,
    done: bool,
}

impl Attempt<'_> {
    pub fn answered(mut self) {
        self.done = true;
        self.health.succeeded();
    }

    pub fn failed(mut self, why: &str) {
        self.done = true;
        self.health.failed(self.generation, why);
    }

    /// Records the outcome of a gRPC call: only a failure of the transport itself (a
    /// status tonic made from a connection error, with a source) means unreachable.
    pub fn observe<T>(self, r: &Result<T, tonic::Status>) {
        match r {
            Err(s) if is_transport_failure(s) || is_misaddressed(s) => self.failed(s.message()),
            _ => self.answered(),
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done && self.started.elapsed() >= ABANDONED_AFTER {
            self.health
                .failed(self.generation, "no answer before the caller gave up");
        }
    }
}

/// Whether `s` reports that the peer was not reached (connection refused or reset,
/// connect timeout, GOAWAY, keepalive timeout) rather than an answer from the peer.
/// tonic attaches the transport error as the source of such a status; a status the
/// peer sent has none.
pub fn is_transport_failure(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// Whether `s` is a peer's refusal of a message addressed to another node id (a new process
/// at a removed or wiped member's address): no node of that id is there, so it is waited out
/// like an unreachable one.
pub fn is_misaddressed(s: &tonic::Status) -> bool {
    s.metadata().contains_key(super::TARGET_METADATA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling() {
        assert_eq!(delay(1), FIRST_DELAY);
        assert_eq!(delay(2), FIRST_DELAY * 2);
        assert_eq!(delay(5), FIRST_DELAY * 16);
        assert_eq!(delay(6), FIRST_DELAY * 32);
        assert_eq!(delay(7), CEILING);
        assert_eq!(delay(u32::MAX), CEILING);
        let s: Vec<_> = series().take(8).collect();
        assert!(s.iter().all(|d| *d < CEILING.mul_f64(1.2)), "{s:?}");
        assert!(s[0] < Duration::from_millis(60), "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_peer_is_not_tried_until_its_backoff_ends() {
        let h = PeerHealth::new("p");
        assert!(h.backing_off().is_none());
        h.attempt().failed("refused");
        let at = h.backing_off().expect("backing off after a failure");
        assert!(at - Instant::now() >= Duration::from_millis(40));
        h.ready().await;
        assert!(Instant::now() >= at, "ready waits out the backoff");
        assert!(h.backing_off().is_none());
        h.attempt().failed("refused");
        let second = h.backing_off().expect("backing off again") - Instant::now();
        assert!(second >= Duration::from_millis(80), "{second:?}: doubled");
        h.attempt().answered();
        assert!(h.backing_off().is_none(), "an answer ends the backoff");
    }

    #[tokio::test(start_paused = true)]
    async fn refused_opens_back_off_until_one_is_accepted() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        r.wait().await;
        assert_eq!(Instant::now(), t0, "nothing refused: no wait");
        r.refused();
        r.refused();
        r.wait().await;
        let waited = Instant::now() - t0;
        assert!(waited >= Duration::from_millis(80), "{waited:?}: doubled");
        r.accepted();
        let t1 = Instant::now();
        r.wait().await;
        assert_eq!(Instant::now(), t1, "accepted: no wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_from_a_peer_ends_its_backoff_at_most_once_per_interval() {
        let h = std::sync::Arc::new(PeerHealth::new("p"));
        assert!(!h.heard_from(), "not backing off: nothing to end");
        for _ in 0..6 {
            h.attempt().failed("unreachable");
        }
        let at = h.backing_off().expect("backing off");
        assert!(
            at - Instant::now() > Duration::from_secs(1),
            "near the ceiling"
        );
        // A caller waiting out the backoff is woken by the message, long before `at`.
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.ready().await }
        });
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        let t0 = Instant::now();
        assert!(h.heard_from());
        waiter.await.unwrap();
        assert_eq!(Instant::now(), t0, "woken at once");
        assert!(h.backing_off().is_none());
        // Still unreachable: the failure count stayed, so the next wait is the ceiling's,
        // and a message within HEARD_FROM_EVERY does not end it.
        h.attempt().failed("unreachable");
        let again = h.backing_off().expect("backing off again") - Instant::now();
        assert!(again >= CEILING.mul_f64(0.8), "{again:?}");
        assert!(!h.heard_from(), "too soon after the last one");
        assert!(h.backing_off().is_some());
        tokio::time::advance(HEARD_FROM_EVERY).await;
        assert!(h.heard_from(), "once per interval");
    }

    #[test]
    fn concurrent_failures_count_once() {
        let h = PeerHealth::new("p");
        let (a, b) = (h.attempt(), h.attempt());
        a.failed("refused");
        b.failed("refused");
        assert_eq!(h.lock().failures, 1);
    }

    #[test]
    fn a_failure_older_than_an_answer_is_ignored() {
        let h = PeerHealth::new("p");
        let slow = h.attempt();
        h.attempt().answered();
        slow.failed("timed out");
        assert!(h.backing_off().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_attempt_is_a_failure_and_a_quick_one_is_not() {
        let h = PeerHealth::new("p");
        drop(h.attempt());
        assert!(h.backing_off().is_none(), "dropped at once: no verdict");
        let a = h.attempt();
        tokio::time::advance(ABANDONED_AFTER).await;
        drop(a);
        assert!(
            h.backing_off().is_some(),
            "dropped after waiting: no answer"
        );
    }

    #[test]
    fn only_transport_errors_mean_unreachable() {
        assert!(!is_transport_failure(&tonic::Status::unavailable(
            "group 3 is not hosted here"
        )));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_transport_failure(&tonic::Status::from_error(Box::new(
            refused
        ))));
    }
}
