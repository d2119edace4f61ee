//! Write fencing of a replicated volume: which publish generations may write, as the
//! volume's group applied them, and the one check of a writer's generation against that.
//!
//! The rule: every publish of a volume to a node gets a generation from the meta group,
//! growing with each publish. Once a publish commits, a `Fence` listing the publishes in
//! force is applied in the volume's own group before the publish is answered. From then
//! on a write or discard carrying any other generation is refused at apply (so on every
//! replica alike, whoever leads), and so is a flush, checked by the leader after a
//! linearizable barrier. Generation 0 is the unfenced caller: one that never published
//! (an admin's `cairnctl volume write`, the copies behind snapshots and clones, a frontend
//! attached before generations existed). It may flush, and write only while no publish is
//! in force: a published volume takes writes from its publishes alone (decision 032).

use serde::{Deserialize, Serialize};

use crate::meta::catalog::VolumeRecord;

/// Who may write to a volume: its publishes in force when the fence was made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// The volume's newest publish generation when this fence was made; a group applies
    /// fences in this order and ignores an older one that arrives late.
    pub generation: u64,
    /// Every publish in force (several only for multi-node access modes).
    pub holders: Vec<Holder>,
}

/// One publish in force.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub generation: u64,
    pub readonly: bool,
}

/// What a fenced request does: writes and discards change data, a flush does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Write,
    Flush,
}

impl Fence {
    /// The fence of a volume's catalogue record.
    pub fn of(vol: &VolumeRecord) -> Fence {
        Fence {
            generation: vol.generation,
            holders: vol
                .attachments
                .iter()
                .filter(|a| a.generation > 0)
                .map(|a| Holder {
                    node: a.node_name.clone(),
                    generation: a.generation,
                    readonly: a.readonly,
                })
                .collect(),
        }
    }

    /// Whether this fence replaces `current`: never an older one (publishes may be
    /// answered, and their fences proposed, out of order).
    pub fn supersedes(&self, current: Option<&Fence>) -> bool {
        current.is_none_or(|c| self.generation >= c.generation)
    }
}

/// Checks a request carrying `generation` against the group's applied fence; the error is
/// the refusal's message (FAILED_PRECONDITION on the wire, EIO in the frontends).
pub fn check(fence: Option<&Fence>, generation: u64, access: Access) -> Result<(), String> {
    if generation == 0 {
        return match fence.and_then(|f| f.holders.iter().max_by_key(|h| h.generation)) {
            Some(h) if access == Access::Write => Err(format!(
                "volume published to {} at generation {}; this writer holds no publish \
                 (generation 0): unpublish the volume first",
                h.node, h.generation
            )),
            _ => Ok(()),
        };
    }
    let Some(fence) = fence else {
        return Err(format!(
            "the volume's group holds no fence; this writer holds generation {generation}"
        ));
    };
    if let Some(h) = fence.holders.iter().find(|h| h.generation == generation) {
        if h.readonly && access == Access::Write {
            return Err(format!(
                "volume published read-only to {} at generation {generation}: writes are refused",
                h.node
            ));
        }
        return Ok(());
    }
    Err(match fence.holders.iter().max_by_key(|h| h.generation) {
        Some(h) => format!(
            "volume published to {} at generation {}; this writer holds {generation}",
            h.node, h.generation
        ),
        None => format!(
            "volume not published (fenced at generation {}); this writer holds {generation}",
            fence.generation
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(node: &str, generation: u64, readonly: bool) -> Holder {
        Holder {
            node: node.into(),
            generation,
            readonly,
        }
    }

    fn fence(generation: u64, holders: Vec<Holder>) -> Fence {
        Fence {
            generation,
            holders,
        }
    }

    #[test]
    fn only_a_publish_in_force_writes_and_generation_zero_only_when_unpublished() {
        let f = fence(7, vec![holder("node-2", 7, false)]);
        assert_eq!(check(Some(&f), 7, Access::Write), Ok(()));
        // An unfenced writer may not write to a published volume, but may flush.
        assert_eq!(
            check(Some(&f), 0, Access::Write).unwrap_err(),
            "volume published to node-2 at generation 7; this writer holds no publish \
             (generation 0): unpublish the volume first"
        );
        assert_eq!(check(Some(&f), 0, Access::Flush), Ok(()));
        assert_eq!(check(None, 0, Access::Write), Ok(()));
        // Unpublished again (a fence with no holder): unfenced writers are back.
        assert_eq!(check(Some(&fence(8, vec![])), 0, Access::Write), Ok(()));
        assert_eq!(
            check(Some(&f), 6, Access::Write).unwrap_err(),
            "volume published to node-2 at generation 7; this writer holds 6"
        );
        assert!(check(Some(&f), 6, Access::Flush).is_err());
        // A generation the group never fenced (newer than it knows) is refused too.
        assert!(check(Some(&f), 8, Access::Write).is_err());
        assert!(check(None, 3, Access::Write).is_err());
        let unpublished = fence(8, vec![]);
        assert!(
            check(Some(&unpublished), 7, Access::Write)
                .unwrap_err()
                .contains("not published")
        );
    }

    #[test]
    fn a_read_only_publish_flushes_but_never_writes() {
        let f = fence(
            9,
            vec![holder("node-1", 8, false), holder("node-3", 9, true)],
        );
        assert_eq!(check(Some(&f), 8, Access::Write), Ok(()));
        assert!(
            check(Some(&f), 9, Access::Write)
                .unwrap_err()
                .contains("read-only")
        );
        assert_eq!(check(Some(&f), 9, Access::Flush), Ok(()));
    }

    #[test]
    fn fences_apply_in_generation_order() {
        let newer = fence(5, vec![holder("b", 5, false)]);
        let older = fence(4, vec![holder("a", 4, false)]);
        assert!(newer.supersedes(None));
        assert!(newer.supersedes(Some(&older)));
        assert!(!older.supersedes(Some(&newer)));
        assert!(newer.supersedes(Some(&newer)), "a repeat applies again");
    }
}
