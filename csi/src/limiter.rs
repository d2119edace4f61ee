//! Per-volume in-flight guard: one operation per volume at a time.
//! A second concurrent call on the same volume is refused with ABORTED, as the CSI spec allows.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{CsiError, Result};

/// The set of volumes with an operation in flight.
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; releases the volume when dropped.
#[derive(Debug)]
pub struct Guard {
    busy: Arc<Mutex<HashSet<String>>>,
    volume_id: String,
}

impl Limiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claim `volume_id`, or ABORTED if another operation holds it.
    pub fn try_acquire(&self, volume_id: &str) -> Result<Guard> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(volume_id.to_string()) {
            return Err(CsiError::Aborted(format!(
                "an operation on volume {volume_id} is already in progress"
            )));
        }
        Ok(Guard {
            busy: self.busy.clone(),
            volume_id: volume_id.to_string(),
        })
    }

    /// How many volumes are busy (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.volume_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_release() {
        let l = Limiter::new();
        let g = l.try_acquire("pvc-1").unwrap();
        let e = l.try_acquire("pvc-1").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted);
        // Other volumes are independent.
        let g2 = l.try_acquire("pvc-2").unwrap();
        assert_eq!(l.in_flight(), 2);
        drop(g);
        let _g3 = l.try_acquire("pvc-1").unwrap();
        drop(g2);
        assert_eq!(l.in_flight(), 1);
    }

    #[test]
    fn guard_is_released_when_a_task_panics() {
        let l = Limiter::new();
        let l2 = l.clone();
        let r = std::thread::spawn(move || {
            let _g = l2.try_acquire("pvc-x").unwrap();
            panic!("operation failed");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(l.in_flight(), 0);
        assert!(l.try_acquire("pvc-x").is_ok());
    }

    #[test]
    fn concurrent_claims_admit_exactly_one() {
        let l = Limiter::new();
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (l, b) = (l.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    // Keep the guard alive until every thread has tried.
                    let g = l.try_acquire("pvc-race");
                    b.wait();
                    g.is_ok()
                })
            })
            .collect();
        let admitted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(admitted, 1);
    }
}
