//! Volume groups this node could not open (e.g. corrupt state on disk): why, since when,
//! and when the reconcile loop tries again (exponential backoff), so one bad group never
//! stops the others or spins a core.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        let attempts = groups.get(&group).map_or(0, |f| f.attempts) + 1;
        let f = Failure {
            volume: volume.to_string(),
            reason,
            attempts,
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
}
