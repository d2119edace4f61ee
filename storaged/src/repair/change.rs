//! One membership change of a repair on the wire: sent by the meta leader to the volume
//! group's leader (`RaftService.ChangeMembers`), applied there through openraft.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::raft::{ChannelCache, Node, Raft};
use crate::{Error, Result};

/// How long the group leader gives one change (a voter change commits two entries).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Adds `id` at `addr` as a learner, without waiting for it to catch up.
    AddLearner { id: u64, addr: String },
    /// Replaces the voters (a joint config, then the new one); removed voters leave.
    SetVoters(BTreeSet<u64>),
    /// Removes a learner.
    RemoveLearner(u64),
}

/// On the group's leader: applies `change`, bounded by `CHANGE_TIMEOUT`. Each change is
/// idempotent: one already in place changes nothing.
pub async fn apply(raft: &Raft, group: u64, change: MemberChange) -> Result<()> {
    if !raft.is_leader() {
        return Err(Error::Unavailable(format!(
            "not the leader of group {group}"
        )));
    }
    let voters: BTreeSet<u64> = raft.voter_ids().collect();
    let learners: BTreeSet<u64> = raft.learner_ids().collect();
    let fut = async {
        match &change {
            MemberChange::AddLearner { id, addr } => {
                if voters.contains(id) || learners.contains(id) {
                    return Ok(());
                }
                raft.add_learner(*id, Node { addr: addr.clone() }, false)
                    .await
                    .map(|_| ())
            }
            MemberChange::SetVoters(want) => raft
                .change_membership(ChangeMembers::ReplaceAllVoters(want.clone()), false)
                .await
                .map(|_| ()),
            MemberChange::RemoveLearner(id) => {
                if !learners.contains(id) {
                    return Ok(());
                }
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false)
                    .await
                    .map(|_| ())
            }
        }
    };
    match tokio::time::timeout(CHANGE_TIMEOUT, fut).await {
        Ok(Ok(())) => {
            tracing::info!(group, change = ?change, "membership changed");
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "group {group}: membership change {change:?}: {e}"
        ))),
        Err(_) => Err(Error::Unavailable(format!(
            "group {group}: membership change {change:?} not done within {CHANGE_TIMEOUT:?}"
        ))),
    }
}

/// From the meta leader: asks the node at `addr` (the group's leader) to apply `change`.
pub async fn send(
    channels: &ChannelCache,
    addr: &str,
    group: u64,
    change: &MemberChange,
) -> Result<()> {
    let mut client = channels.client(addr).map_err(Error::Internal)?;
    let msg = cairn_proto::cairn::v1::RaftMessage {
        group_id: group,
        payload: crate::raft::encode(change)?.into(),
    };
    let reply = tokio::time::timeout(
        CHANGE_TIMEOUT + Duration::from_secs(2),
        client.change_members(msg),
    )
    .await
    .map_err(|_| Error::Unavailable(format!("{addr}: no answer to a membership change")))?
    .map_err(|s| Error::Unavailable(format!("{addr}: {}", s.message())))?
    .into_inner();
    if !reply.error.is_empty() {
        return Err(Error::Unavailable(format!("{addr}: {}", reply.error)));
    }
    Ok(())
}
