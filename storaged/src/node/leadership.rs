//! Leader placement: each volume group's leader hands leadership to the member its volume
//! is attached to, so that node's frontend reads and writes locally, with no gRPC hop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::meta::catalog::{Catalog, VolumeKind, VolumeRecord};
use crate::node::groups::Groups;
use crate::node::meta::Meta;
use crate::raft::LogId;

/// How often a leader re-checks where its group should be led from.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After asking for a transfer, how long before asking again; doubled after each attempt
/// that did not leave the group led by its preferred member, up to `MAX_RETRY_AFTER`. A
/// failed transfer costs the group up to an election timeout without writes, so a member
/// that keeps failing to take over costs less and less often.
const RETRY_AFTER: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(320);
/// How far behind the leader's last entry the target may be. During the transfer the
/// leader proposes nothing new, so the target only has to catch up with this many.
const MAX_LAG: u64 = 64;

/// The member a replicated volume should be led from: the node it is attached to (the
/// first attachment, for a volume attached to several), when that node holds a replica.
pub fn preferred_leader(cat: &Catalog, vol: &VolumeRecord) -> Option<u64> {
    if vol.kind != VolumeKind::Replicated {
        return None;
    }
    let attached = &vol.attachments.first()?.node_name;
    cat.nodes
        .values()
        .find(|n| &n.name == attached)
        .map(|n| n.id)
        .filter(|id| vol.members.contains(id))
}

/// What a group's leader `me` sees: the preferred member and each member's matched entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderView {
    pub me: u64,
    pub preferred: Option<u64>,
    pub last_log_index: Option<u64>,
    pub matched: BTreeMap<u64, Option<LogId>>,
}

/// The member to hand leadership to now, if any: the preferred one, when it is not this
/// node and its log is within `MAX_LAG` entries of the leader's.
pub fn transfer_target(v: &LeaderView) -> Option<u64> {
    let to = v.preferred.filter(|p| *p != v.me)?;
    let matched = v.matched.get(&to)?.as_ref().map(|l| l.index())?;
    let last = v.last_log_index.unwrap_or(0);
    (matched + MAX_LAG >= last).then_some(to)
}

/// The wait before the next transfer attempt, given the wait after the previous one.
pub fn next_wait(previous: Option<Duration>) -> Duration {
    previous.map_or(RETRY_AFTER, |w| (w * 2).min(MAX_RETRY_AFTER))
}

/// The last transfer this node asked for in a group, and how long to wait after it.
struct Attempt {
    to: u64,
    at: Instant,
    wait: Duration,
}

/// Whether a transfer to `to` may be asked for at `now`, given the group's last attempt; if
/// so, the wait to keep after it. Backing off applies to the same target only: a volume
/// attached somewhere new is handed over at once.
fn due(last: Option<&Attempt>, to: u64, now: Instant) -> Option<Duration> {
    let previous = last.filter(|a| a.to == to);
    if previous.is_some_and(|a| now.saturating_duration_since(a.at) < a.wait) {
        return None;
    }
    Some(next_wait(previous.map(|a| a.wait)))
}

/// Runs until the node's catalogue watch closes: on every catalogue change and every
/// `CHECK_EVERY`, each group this node leads is handed to its preferred member if needed.
pub(super) async fn run(me: u64, meta: Arc<Meta>, groups: Arc<Groups>) {
    let mut changed = meta.changes();
    let mut attempts: HashMap<u64, Attempt> = HashMap::new();
    loop {
        check(me, &meta, &groups, &mut attempts).await;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

async fn check(me: u64, meta: &Meta, groups: &Groups, attempts: &mut HashMap<u64, Attempt>) {
    // Only attached volumes have a preferred leader: the rest are not looked at (with a
    // thousand idle volumes, this loop then costs next to nothing).
    let wanted: HashMap<u64, (String, u64)> = meta.with_catalog(|cat| {
        cat.volumes
            .values()
            .filter_map(|v| preferred_leader(cat, v).map(|p| (v.id, (v.name.clone(), p))))
            .collect()
    });
    attempts.retain(|g, _| wanted.contains_key(g));
    for (&group, (name, preferred)) in &wanted {
        let Some(raft) = groups.get(group) else {
            continue;
        };
        let preferred = Some(*preferred);
        let current_leader = raft.metrics().borrow_watched().current_leader;
        if current_leader == preferred {
            // Led where it should be: a later move starts afresh.
            attempts.remove(&group);
            continue;
        }
        if current_leader != Some(me) {
            continue;
        }
        let metrics = raft.metrics();
        let view = {
            let m = metrics.borrow_watched();
            LeaderView {
                me,
                preferred,
                last_log_index: m.last_log_index,
                matched: m.replication.clone().unwrap_or_default(),
            }
        };
        let Some(to) = transfer_target(&view) else {
            continue;
        };
        let Some(wait) = due(attempts.get(&group), to, Instant::now()) else {
            continue;
        };
        attempts.insert(
            group,
            Attempt {
                to,
                at: Instant::now(),
                wait,
            },
        );
        tracing::info!(volume = %name, group, from = me, to, retry_after = ?wait, "handing leadership to the attached node");
        groups.wake(group, &raft);
        if let Err(e) = raft.trigger().transfer_leader(to).await {
            tracing::warn!(volume = %name, group, to, error = %e, "leadership transfer not started");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::catalog::{AttachmentRecord, NodeRecord, NodeRole};

    fn catalog(attached: &[&str], members: Vec<u64>, kind: VolumeKind) -> (Catalog, VolumeRecord) {
        let mut cat = Catalog::default();
        for id in 1..=4 {
            cat.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("node-{id}"),
                    addr: format!("127.0.0.1:{id}"),
                    labels: Default::default(),
                    capacity_bytes: 1 << 30,
                    role: NodeRole::Voter,
                },
            );
        }
        let vol = VolumeRecord {
            id: 7,
            name: "v".into(),
            size: 1 << 20,
            replicas: members.len() as u32,
            kind,
            members,
            attachments: attached
                .iter()
                .map(|n| AttachmentRecord {
                    node_name: n.to_string(),
                    readonly: false,
                    multi_node: attached.len() > 1,
                    generation: 0,
                })
                .collect(),
            labels: Default::default(),
            created_unix: 0,
            origin: None,
            state: crate::meta::catalog::VolumeState::Ready,
            generation: 0,
            repair: None,
        };
        cat.volumes.insert("v".into(), vol.clone());
        (cat, vol)
    }

    #[test]
    fn the_preferred_leader_is_the_attached_member() {
        let (cat, vol) = catalog(&["node-2"], vec![1, 2, 3], VolumeKind::Replicated);
        assert_eq!(preferred_leader(&cat, &vol), Some(2));
        let (cat, vol) = catalog(&["node-3", "node-1"], vec![1, 2, 3], VolumeKind::Replicated);
        assert_eq!(preferred_leader(&cat, &vol), Some(3), "first attachment");
        let (cat, vol) = catalog(&["node-4"], vec![1, 2, 3], VolumeKind::Replicated);
        assert_eq!(preferred_leader(&cat, &vol), None, "no replica there");
        let (cat, vol) = catalog(&["kube-node-9"], vec![1, 2, 3], VolumeKind::Replicated);
        assert_eq!(preferred_leader(&cat, &vol), None, "not a storaged node");
        let (cat, vol) = catalog(&[], vec![1, 2, 3], VolumeKind::Replicated);
        assert_eq!(preferred_leader(&cat, &vol), None, "not attached");
        let (cat, vol) = catalog(&["node-1"], vec![1], VolumeKind::Local);
        assert_eq!(
            preferred_leader(&cat, &vol),
            None,
            "local volumes have no Raft group"
        );
    }

    #[test]
    fn failed_transfers_are_retried_less_and_less_often() {
        let mut waits = vec![next_wait(None)];
        for _ in 0..8 {
            waits.push(next_wait(waits.last().copied()));
        }
        assert_eq!(waits[0], RETRY_AFTER);
        assert_eq!(waits[1], RETRY_AFTER * 2);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), MAX_RETRY_AFTER);
    }

    #[test]
    fn a_transfer_is_due_after_the_wait_or_for_a_new_target() {
        let t0 = Instant::now();
        assert_eq!(due(None, 2, t0), Some(RETRY_AFTER));
        let last = Attempt {
            to: 2,
            at: t0,
            wait: RETRY_AFTER,
        };
        assert_eq!(
            due(Some(&last), 2, t0 + RETRY_AFTER / 2),
            None,
            "backing off"
        );
        assert_eq!(
            due(Some(&last), 2, t0 + RETRY_AFTER),
            Some(RETRY_AFTER * 2),
            "retried, and the next wait is longer"
        );
        assert_eq!(
            due(Some(&last), 3, t0 + RETRY_AFTER / 2),
            Some(RETRY_AFTER),
            "attached elsewhere: at once"
        );
    }

    #[test]
    fn leadership_moves_only_to_a_caught_up_preferred_member() {
        let log = |i: u64| {
            Some(openraft::testing::log_id::<crate::raft::TypeConfig>(
                1, 1, i,
            ))
        };
        let view = |preferred, matched2| LeaderView {
            me: 1,
            preferred,
            last_log_index: Some(1000),
            matched: [(1, log(1000)), (2, matched2), (3, log(1000))].into(),
        };
        assert_eq!(transfer_target(&view(Some(2), log(1000))), Some(2));
        assert_eq!(
            transfer_target(&view(Some(2), log(1000 - MAX_LAG))),
            Some(2)
        );
        assert_eq!(
            transfer_target(&view(Some(2), log(999 - MAX_LAG))),
            None,
            "lagging"
        );
        assert_eq!(
            transfer_target(&view(Some(2), None)),
            None,
            "nothing matched yet"
        );
        assert_eq!(
            transfer_target(&view(Some(1), log(1000))),
            None,
            "already here"
        );
        assert_eq!(
            transfer_target(&view(None, log(1000))),
            None,
            "no preference"
        );
        assert_eq!(
            transfer_target(&view(Some(4), log(1000))),
            None,
            "not replicating to it"
        );
    }
}
