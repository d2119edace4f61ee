//! Volume groups this node could not open (e.g. corrupt state on disk): why, since when,
//! and when the reconcile loop tries again (exponential backoff), so one bad group never
//! stops the others or spins a core; and those its peers report in their pings (051).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1::FailedGroup;

/// The first retry of a group that failed to open comes this long after the failure…
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// …and each later one twice as long after the previous, up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// One group that failed to open here.
#[derive(Clone, Debug)]
pub struct Failure {
    pub volume: String,
    /// The error of the last attempt.
    pub reason: String,
    /// Attempts that failed in a row.
    pub attempts: u32,
    /// The first of them (in this process).
    pub since: Instant,
    /// When the reconcile loop tries again.
    pub retry_at: Instant,
}

/// The wait before the attempt after `attempts` failures in a row.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[derive(Default)]
pub struct Failed {
    groups: Mutex<BTreeMap<u64, Failure>>,
}

impl Failed {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Failure>> {
        self.groups.lock().expect("failed groups lock poisoned")
    }

    /// Whether `group` failed and its next attempt is not due at `now`.
    pub fn waiting(&self, group: u64, now: Instant) -> bool {
        self.lock().get(&group).is_some_and(|f| f.retry_at > now)
    }

    /// Records a failed attempt to open `group`; the failure as recorded.
    pub fn record(&self, group: u64, volume: &str, reason: String, now: Instant) -> Failure {
        let mut groups = self.lock();
        let (attempts, since) = groups
            .get(&group)
            .map_or((1, now), |f| (f.attempts + 1, f.since));
        let f = Failure {
            volume: volume.to_string(),
            reason,
            attempts,
            since,
            retry_at: now + backoff(attempts),
        };
        groups.insert(group, f.clone());
        f
    }

    /// Forgets `group` (it opened, or no longer belongs here); its failure, if any.
    pub fn clear(&self, group: u64) -> Option<Failure> {
        self.lock().remove(&group)
    }

    /// Forgets every group `keep` rejects.
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.lock().retain(|g, _| keep(*g));
    }

    /// Why `group` failed to open, if it did.
    pub fn reason(&self, group: u64) -> Option<String> {
        self.lock().get(&group).map(|f| f.reason.clone())
    }

    /// Every failed group and its failure.
    pub fn all(&self) -> Vec<(u64, Failure)> {
        self.lock().iter().map(|(g, f)| (*g, f.clone())).collect()
    }

    /// The soonest retry due, if any group failed.
    pub fn next_retry(&self) -> Option<Instant> {
        self.lock().values().map(|f| f.retry_at).min()
    }

    /// What this node's pings say of its failed groups at `now` (nothing, usually).
    pub fn report(&self, now: Instant) -> Vec<FailedGroup> {
        self.lock()
            .iter()
            .map(|(g, f)| FailedGroup {
                group_id: *g,
                failing_ms: now.saturating_duration_since(f.since).as_millis() as u64,
                reason: clip(&f.reason),
            })
            .collect()
    }

    /// The groups failing here at `now` as a ping reports them (`node` is this one).
    pub fn failing(&self, node: u64, now: Instant) -> Failing {
        self.lock()
            .iter()
            .map(|(g, f)| {
                let failing_for = now.saturating_duration_since(f.since);
                ((node, *g), (failing_for, f.reason.clone()))
            })
            .collect()
    }
}

/// A ping carries at most this much of a failure's reason.
const REASON_BYTES: usize = 512;

fn clip(reason: &str) -> String {
    let mut end = reason.len().min(REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Replicas that failed to open, by (node, group): for how long, and why.
pub type Failing = BTreeMap<(u64, u64), (Duration, String)>;

/// A peer's report stands this long without a newer ping (four ping periods): a node that
/// stopped pinging is down, which the repair loop sees by other means.
pub const PEER_REPORT_FOR: Duration = Duration::from_secs(2);

/// One peer's failed groups, as its last ping reported them.
struct PeerReport {
    at: Instant,
    /// Group → since when it has been failing (on this node's clock), and why.
    groups: BTreeMap<u64, (Instant, String)>,
}

/// The failed groups each peer reports in its pings (kept on every node; read by the meta
/// leader's repair loop). Empty, and costing a lock per ping, while every group opens.
#[derive(Default)]
pub struct PeerFailed {
    peers: Mutex<BTreeMap<u64, PeerReport>>,
}

impl PeerFailed {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PeerReport>> {
        self.peers.lock().expect("peer failures lock poisoned")
    }

    /// Takes `peer`'s ping at `now`: its failed groups replace what it said before.
    pub fn reported(&self, peer: u64, failed: &[FailedGroup], now: Instant) {
        let mut peers = self.lock();
        if failed.is_empty() {
            peers.remove(&peer);
            return;
        }
        let groups = failed
            .iter()
            .map(|f| {
                let since = now
                    .checked_sub(Duration::from_millis(f.failing_ms))
                    .unwrap_or(now);
                (f.group_id, (since, f.reason.clone()))
            })
            .collect();
        peers.insert(peer, PeerReport { at: now, groups });
    }

    /// Every peer's failed groups at `now`, from reports younger than `PEER_REPORT_FOR`.
    pub fn failing(&self, now: Instant) -> Failing {
        let mut peers = self.lock();
        peers.retain(|_, r| now.saturating_duration_since(r.at) < PEER_REPORT_FOR);
        peers
            .iter()
            .flat_map(|(n, r)| {
                r.groups.iter().map(move |(g, (since, reason))| {
                    let failing_for = now.saturating_duration_since(*since);
                    ((*n, *g), (failing_for, reason.clone()))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap_and_clear_on_success() {
        assert_eq!(backoff(1), FIRST_RETRY);
        assert_eq!(backoff(2), FIRST_RETRY * 2);
        assert_eq!(backoff(3), FIRST_RETRY * 4);
        assert_eq!(backoff(50), MAX_RETRY);
        let failed = Failed::default();
        let t0 = Instant::now();
        assert!(!failed.waiting(7, t0));
        let f = failed.record(7, "v", "bad spool".into(), t0);
        assert_eq!((f.attempts, f.retry_at), (1, t0 + FIRST_RETRY));
        assert!(failed.waiting(7, t0 + FIRST_RETRY / 2));
        assert!(!failed.waiting(7, t0 + FIRST_RETRY));
        let f = failed.record(7, "v", "still bad".into(), t0 + FIRST_RETRY);
        assert_eq!(f.attempts, 2);
        assert_eq!(failed.next_retry(), Some(t0 + FIRST_RETRY * 3));
        assert_eq!(failed.reason(7).as_deref(), Some("still bad"));
        failed.record(8, "w", "x".into(), t0);
        failed.retain(|g| g != 8);
        assert_eq!(failed.all().len(), 1);
        assert_eq!(failed.clear(7).map(|f| f.attempts), Some(2));
        assert_eq!(failed.next_retry(), None);
    }

    #[test]
    fn failures_are_reported_from_the_first_attempt_and_peer_reports_expire() {
        let failed = Failed::default();
        let t0 = Instant::now();
        failed.record(7, "v", "bad spool".into(), t0);
        failed.record(7, "v", "still bad".into(), t0 + Duration::from_secs(2));
        let report = failed.report(t0 + Duration::from_secs(5));
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].group_id, report[0].failing_ms), (7, 5000));
        assert_eq!(report[0].reason, "still bad");
        let here = failed.failing(1, t0 + Duration::from_secs(5));
        assert_eq!(here[&(1, 7)].0, Duration::from_secs(5));

        let peers = PeerFailed::default();
        let t1 = t0 + Duration::from_secs(10);
        peers.reported(3, &report, t1);
        let seen = peers.failing(t1 + Duration::from_secs(1));
        assert_eq!(seen[&(3, 7)], (Duration::from_secs(6), "still bad".into()));
        // A report not renewed expires; an empty report clears at once.
        assert!(peers.failing(t1 + PEER_REPORT_FOR).is_empty());
        peers.reported(3, &report, t1);
        peers.reported(3, &[], t1);
        assert!(peers.failing(t1).is_empty());
        assert_eq!(clip(&"é".repeat(400)).len(), REASON_BYTES);
    }
}
