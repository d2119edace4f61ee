//! What this node reports about its Raft groups: one group's status (answered to
//! `GroupStatus`, read by volume views) and every hosted group's state for the metrics.

use std::collections::{BTreeMap, HashMap};

use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};

use crate::metrics::GroupSample;
use crate::raft::{META_GROUP, Raft};

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

/// The status of a group this node hosts (`None`: not hosted).
pub fn group_status(raft: Option<Raft>) -> GroupStatus {
    let Some(raft) = raft else {
        return GroupStatus::default();
    };
    let m = raft.metrics().borrow_watched().clone();
    let matched = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, l)| (*id, l.as_ref().map(|l| l.index())))
                .collect()
        })
        .unwrap_or_default();
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
    }
}

/// The metrics' view of the meta group and `volumes` (id, Raft), named from `names`
/// (volume id → name); `me` is this node.
pub fn samples(
    me: u64,
    meta: &Raft,
    volumes: Vec<(u64, Raft)>,
    names: &HashMap<u64, String>,
    quiet: &dyn Fn(u64) -> bool,
) -> Vec<GroupSample> {
    let name_of = |group: u64| {
        names
            .get(&group)
            .cloned()
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
            GroupSample {
                volume,
                group,
                leader: m.current_leader == Some(me),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                applied_index: m.last_applied.as_ref().map_or(0, |l| l.index()),
                purged_index: m.purged.as_ref().map_or(0, |l| l.index()),
                quiet: quiet(group),
            }
        })
        .collect()
}
