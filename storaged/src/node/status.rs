//! What this node reports about its Raft groups: one group's status (answered to
//! `GroupStatus`, read by volume views) and every hosted group's state for the metrics.

use std::collections::{BTreeMap, HashMap};

use cairn_proto::cairn::v1::VolumeHealth;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use crate::metrics::GroupSample;
use crate::raft::{META_GROUP, Raft};

/// A member further behind the leader than this is reported as lagging.
pub const LAG_ENTRIES: u64 = 1000;

/// What the metrics need of a volume's catalogue record.
pub struct VolumeInfo {
    pub name: String,
    pub replicas: u32,
    /// A replacement of one of its members is under way.
    pub repairing: bool,
}

/// A volume's health as its group's leader sees it: healthy when at least `replicas`
/// voters (the leader included) are on live nodes and within `LAG_ENTRIES` of its log, no
/// learner is catching up and no repair is under way; degraded otherwise.
pub fn leader_health(
    me: u64,
    last_log_index: u64,
    voters: &[u64],
    learners: &[u64],
    matched: &BTreeMap<u64, Option<u64>>,
    info: &VolumeInfo,
    silent: &dyn Fn(u64) -> bool,
) -> VolumeHealth {
    let up_to_date = voters
        .iter()
        .filter(|v| {
            **v == me
                || (!silent(**v)
                    && matched
                        .get(v)
                        .copied()
                        .flatten()
                        .is_some_and(|m| last_log_index.saturating_sub(m) <= LAG_ENTRIES))
        })
        .count();
    if up_to_date >= info.replicas as usize && learners.is_empty() && !info.repairing {
        VolumeHealth::Healthy
    } else {
        VolumeHealth::Degraded
    }
}

/// One node's view of a group, answered to `GroupStatus`.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GroupStatus {
    pub hosted: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// On the leader: each member's matched log index.
    pub matched: BTreeMap<u64, Option<u64>>,
    /// Meta group only: the node ids in this node's catalogue (the identity probe's
    /// question, see `identity`).
    pub catalogue_nodes: Vec<u64>,
    /// The group's voters as this node knows them (in a joint config, of both sets).
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The membership is joint (a voter change is half done).
    pub joint: bool,
    /// On the leader: the snapshot streams it is sending, by target node.
    pub rebuilds: BTreeMap<u64, crate::rebuild::Progress>,
    /// Not hosted because opening it here failed (retried with backoff): the error.
    pub open_error: Option<String>,
    /// Each member's address in the membership as this node knows it (appended last).
    pub addrs: BTreeMap<u64, String>,
    /// The answering node's id (0: not known, a waiting room); appended last, so a node
    /// from before it still decodes the rest.
    pub node_id: u64,
}

/// Asks the node at `addr` for its view of `group` (`None`: no answer within `within`).
pub async fn ask(
    channels: &crate::raft::ChannelCache,
    addr: &str,
    group: u64,
    within: std::time::Duration,
) -> Option<GroupStatus> {
    let mut client = channels.client(addr).ok()?;
    let msg = cairn_proto::cairn::v1::RaftMessage {
        group_id: group,
        payload: Default::default(),
    };
    let reply = tokio::time::timeout(within, client.group_status(msg))
        .await
        .ok()?
        .ok()?;
    crate::raft::decode(&reply.into_inner().payload).ok()
}

/// On the leader: each member's matched log index (empty elsewhere).
fn matched(m: &openraft::RaftMetrics<crate::raft::TypeConfig>) -> BTreeMap<u64, Option<u64>> {
    m.replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, l)| (*id, l.as_ref().map(|l| l.index())))
                .collect()
        })
        .unwrap_or_default()
}

/// The status of a group this node hosts (`None`: not hosted).
pub fn group_status(raft: Option<Raft>) -> GroupStatus {
    let Some(raft) = raft else {
        return GroupStatus::default();
    };
    let m = raft.metrics().borrow_watched().clone();
    let matched = matched(&m);
    let membership = m.membership_config.membership();
    GroupStatus {
        hosted: true,
        leader: m.current_leader,
        term: m.current_term,
        last_log_index: m.last_log_index,
        matched,
        catalogue_nodes: Vec::new(),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        joint: membership.get_joint_config().len() > 1,
        rebuilds: BTreeMap::new(),
        open_error: None,
        addrs: membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect(),
        node_id: 0,
    }
}

/// The metrics' view of the meta group and `volumes` (id, Raft), described by `infos`
/// (volume id → record); `me` is this node, `silent` tells a peer node gone quiet.
pub fn samples(
    me: u64,
    meta: &Raft,
    volumes: Vec<(u64, Raft)>,
    infos: &HashMap<u64, VolumeInfo>,
    quiet: &dyn Fn(u64) -> bool,
    silent: &dyn Fn(u64) -> bool,
) -> Vec<GroupSample> {
    let name_of = |group: u64| {
        infos
            .get(&group)
            .map(|i| i.name.clone())
            .unwrap_or_else(|| format!("group-{group}"))
    };
    let mut groups = vec![(META_GROUP, meta.clone(), "meta".to_string())];
    groups.extend(
        volumes
            .into_iter()
            .map(|(id, raft)| (id, raft, name_of(id))),
    );
    groups
        .into_iter()
        .map(|(group, raft, volume)| {
            let m = raft.metrics().borrow_watched().clone();
            let leader = m.current_leader == Some(me);
            let health = match (leader, infos.get(&group)) {
                (true, Some(info)) => {
                    let membership = m.membership_config.membership();
                    let voters: Vec<u64> = membership.voter_ids().collect();
                    let learners: Vec<u64> = membership.learner_ids().collect();
                    let matched = matched(&m);
                    let last = m.last_log_index.unwrap_or(0);
                    Some(leader_health(
                        me, last, &voters, &learners, &matched, info, silent,
                    ))
                }
                _ => None,
            };
            GroupSample {
                volume,
                group,
                health,
                leader,
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
                purged_index: m.purged.as_ref().map_or(0, |l| l.index()),
                quiet: quiet(group),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(replicas: u32, repairing: bool) -> VolumeInfo {
        VolumeInfo {
            name: "v".into(),
            replicas,
            repairing,
        }
    }

    #[test]
    fn health_counts_live_caught_up_voters() {
        let matched: BTreeMap<u64, Option<u64>> =
            [(2, Some(5_000)), (3, Some(4_500))].into_iter().collect();
        let alive = |_: u64| false;
        let h = |m: &BTreeMap<u64, Option<u64>>,
                 learners: &[u64],
                 i: &VolumeInfo,
                 s: &dyn Fn(u64) -> bool| {
            leader_health(1, 5_000, &[1, 2, 3], learners, m, i, s)
        };
        assert_eq!(
            h(&matched, &[], &info(3, false), &alive),
            VolumeHealth::Healthy
        );
        // A voter on a silent node does not count, however recent its last match.
        assert_eq!(
            h(&matched, &[], &info(3, false), &|p| p == 3),
            VolumeHealth::Degraded
        );
        // Nor one further behind than LAG_ENTRIES, or never matched.
        let behind: BTreeMap<u64, Option<u64>> =
            [(2, Some(5_000)), (3, Some(3_999))].into_iter().collect();
        assert_eq!(
            h(&behind, &[], &info(3, false), &alive),
            VolumeHealth::Degraded
        );
        let never: BTreeMap<u64, Option<u64>> = [(2, Some(5_000)), (3, None)].into_iter().collect();
        assert_eq!(
            h(&never, &[], &info(3, false), &alive),
            VolumeHealth::Degraded
        );
        assert_eq!(
            h(&never, &[], &info(2, false), &alive),
            VolumeHealth::Healthy
        );
        // A member catching up, or a repair under way, is degraded until it ends.
        assert_eq!(
            h(&matched, &[4], &info(3, false), &alive),
            VolumeHealth::Degraded
        );
        assert_eq!(
            h(&matched, &[], &info(3, true), &alive),
            VolumeHealth::Degraded
        );
    }
}
