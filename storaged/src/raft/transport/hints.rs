//! Where peers were last found answering under their own id, learnt from the seeds
//! (`crate::hints`): dialled before the membership's address, which may be one they left.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::NodeId;

/// How long a hint holds unless the peer is found there again: a node that moved once more,
/// or left the seeds, is dialled where the membership has it after this.
pub const HINT_TTL: Duration = Duration::from_secs(30);

/// Peer id → the address it last answered at, and when; shared by every group's connections.
#[derive(Clone, Default)]
pub struct AddressHints(Arc<Mutex<HashMap<NodeId, (String, Instant)>>>);

impl AddressHints {
    /// Where node `id` answered within `HINT_TTL`.
    pub fn get(&self, id: NodeId) -> Option<String> {
        let m = self.0.lock().expect("address hints poisoned");
        m.get(&id)
            .filter(|(_, at)| at.elapsed() < HINT_TTL)
            .map(|(addr, _)| addr.clone())
    }

    /// Node `id` answered at `addr` just now; whether that address is news.
    pub fn set(&self, id: NodeId, addr: String) -> bool {
        let mut m = self.0.lock().expect("address hints poisoned");
        let news = m.get(&id).is_none_or(|(old, _)| *old != addr);
        m.insert(id, (addr, Instant::now()));
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hint_is_news_once() {
        let h = AddressHints::default();
        assert_eq!(h.get(2), None);
        assert!(h.set(2, "10.0.0.2:7001".into()));
        assert!(
            !h.set(2, "10.0.0.2:7001".into()),
            "the same address again is no news"
        );
        assert_eq!(h.get(2).as_deref(), Some("10.0.0.2:7001"));
        assert!(h.set(2, "10.0.0.9:7001".into()), "a newer address is news");
        assert_eq!(h.get(2).as_deref(), Some("10.0.0.9:7001"));
    }

    #[test]
    fn a_hint_not_confirmed_within_its_ttl_is_ignored() {
        let h = AddressHints::default();
        h.0.lock().unwrap().insert(
            3,
            (
                "10.0.0.3:7001".into(),
                Instant::now() - HINT_TTL - Duration::from_secs(1),
            ),
        );
        assert_eq!(h.get(3), None);
    }
}
