//! Who may speak as a Raft node: a message whose vote names node N must arrive with N's
//! certificate (`node:N`, or `storage-node:<N's name>`), and N must be a member of the group.

use openraft::async_runtime::WatchReceiver;
use openraft::vote::RaftLeaderId;
use tonic::Status;

use crate::node::StorageNode;
use crate::raft::{AppendEntriesRequest, Raft, TypeConfig, Vote};
use crate::tls::Identity;

/// A Raft message that names its sender (the leader or candidate of its vote).
pub trait Claimed {
    fn claimed_sender(&self) -> Option<u64>;
}

pub fn voter(vote: &Vote) -> u64 {
    *vote.leader_id().node_id()
}

impl Claimed for AppendEntriesRequest {
    fn claimed_sender(&self) -> Option<u64> {
        Some(voter(&self.vote))
    }
}

impl Claimed for openraft::raft::VoteRequest<TypeConfig> {
    fn claimed_sender(&self) -> Option<u64> {
        Some(voter(&self.vote))
    }
}

impl Claimed for openraft::raft::TransferLeaderRequest<TypeConfig> {
    fn claimed_sender(&self) -> Option<u64> {
        Some(voter(self.from_leader()))
    }
}

/// Whether a caller holding `who` may speak as node `id`: `node:<id>`, or
/// `storage-node:<name>` when the catalogue registers `id` under that name, or (a node
/// between its first start and its registration) knows neither `id` nor the name.
pub fn speaks_for(node: &StorageNode, who: &Identity, id: u64) -> bool {
    match who {
        Identity::Node(n) => *n == id,
        Identity::StorageNode(name) => node.with_catalog(|c| match c.nodes.get(&id) {
            Some(rec) => rec.name == *name,
            None => !c.nodes.values().any(|n| n.name == *name),
        }),
        _ => false,
    }
}

/// Refuses a message claiming to come from node `claimed` in `group` unless the caller
/// (`None`: a plaintext server) holds `node:<claimed>` and `claimed` is a member of the
/// group. A member may be missing from a lagging replica's view of the group, so a node
/// registered in the catalogue is accepted too. A node that started empty has neither
/// until the meta leader reaches it: it takes messages only from the nodes its peers
/// named at its start (`identity::Admission`), so a valid certificate of a stranger
/// cannot raise its term or feed it a log in that window.
pub fn check_sender(
    node: &StorageNode,
    caller: Option<&Identity>,
    raft: &Raft,
    group: u64,
    claimed: u64,
) -> Result<(), Status> {
    if let Some(who) = caller
        && !speaks_for(node, who, claimed)
    {
        return Err(Status::permission_denied(format!(
            "identity `{who}` may not speak for node {claimed} in group {group}"
        )));
    }
    let (member, no_members) = {
        let m = raft.metrics().borrow_watched().membership_config.clone();
        let members = m.membership();
        let sender = members.get_node(&claimed);
        // A member heard from: this node's backoff toward it ends (`PeerHealth::heard_from`).
        if let Some(peer) = sender
            && node.channels().heard_from(&peer.addr)
        {
            end_backoffs(node, claimed);
        }
        (sender.is_some(), members.nodes().next().is_none())
    };
    let (registered, no_catalogue) =
        node.with_catalog(|c| (c.nodes.contains_key(&claimed), c.nodes.is_empty()));
    let first = no_members && no_catalogue && node.first_senders().contains(&claimed);
    if member || registered || first {
        return Ok(());
    }
    tracing::warn!(
        group,
        claimed,
        "Raft message from a node that is not a member"
    );
    Err(Status::permission_denied(format!(
        "node {claimed} is not a member of group {group}"
    )))
}

/// Ends openraft's replication backoff toward node `peer` in every group this node runs
/// (those it does not lead, or where `peer` is no member, ignore it): the peer was heard
/// from, so its followers' logs are sent now rather than after up to 2 s.
fn end_backoffs(node: &StorageNode, peer: u64) {
    let rafts: Vec<Raft> = std::iter::once(node.meta_raft().clone())
        .chain(node.volume_groups().into_iter().map(|(_, r)| r))
        .collect();
    tracing::debug!(
        peer,
        groups = rafts.len(),
        "peer heard from: replication backoff ended"
    );
    tokio::spawn(async move {
        for raft in rafts {
            let _ = raft.trigger().reset_backoff([peer]).await;
        }
    });
}
