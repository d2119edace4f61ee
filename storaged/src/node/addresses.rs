//! Group memberships follow node addresses: each group this node leads, the meta group
//! included, takes a member's new address from the catalogue once the node re-registers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;

use crate::meta::catalog::Catalog;
use crate::node::groups::Groups;
use crate::node::meta::Meta;
use crate::raft::{META_GROUP, Node, Raft};

/// How often the groups led here are checked when the catalogue has not changed (a
/// group whose leader changed before it took an address is caught up then).
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How soon a pass that left an address behind is retried.
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How long one address change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A member whose address in a group's membership is not the one the catalogue has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub node: u64,
    pub old: String,
    pub new: String,
}

/// The members of `membership` (id → address) that `cat` places at another address.
/// A node the catalogue does not know (a learner not registered yet) keeps its own.
pub fn moved<'a>(
    membership: impl IntoIterator<Item = (u64, &'a str)>,
    cat: &Catalog,
) -> Vec<Moved> {
    membership
        .into_iter()
        .filter_map(|(id, old)| {
            let new = &cat.nodes.get(&id)?.addr;
            (new != old).then(|| Moved {
                node: id,
                old: old.to_string(),
                new: new.clone(),
            })
        })
        .collect()
}

/// The members `raft`'s current membership has at another address than `cat`.
fn moved_in(raft: &Raft, cat: &Catalog) -> Vec<Moved> {
    let metrics = raft.server_metrics();
    let m = metrics.borrow_watched();
    let nodes = m.membership_config.membership().nodes();
    moved(nodes.map(|(id, n)| (*id, n.addr.as_str())), cat)
}

/// Runs forever: on every catalogue change, and every `CHECK_EVERY`, gives the groups
/// led here the catalogue's addresses of their members.
pub(super) async fn run(me: u64, meta: Arc<Meta>, groups: Arc<Groups>) {
    let mut changed = meta.changes();
    loop {
        let again = pass(me, &meta, &groups).await;
        let wait = if again { RETRY_EVERY } else { CHECK_EVERY };
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One pass over the groups led here; whether an address is still to be taken.
async fn pass(me: u64, meta: &Meta, groups: &Groups) -> bool {
    let mut led: Vec<(u64, Raft)> = vec![(META_GROUP, meta.raft().clone())];
    led.extend(groups.volumes());
    // Leading now, not only named leader by a vote kept from before a restart.
    led.retain(|(_, raft)| {
        let metrics = raft.server_metrics();
        let m = metrics.borrow_watched();
        m.state.is_leader() && m.current_leader == Some(me)
    });
    // Most passes end here: the local catalogue agrees with every membership.
    let stale: Vec<(u64, Raft)> = led
        .into_iter()
        .filter(|(_, raft)| meta.with_catalog(|cat| !moved_in(raft, cat).is_empty()))
        .collect();
    if stale.is_empty() {
        return false;
    }
    // Decided on a catalogue with every committed change, never the local copy alone: a
    // leader whose catalogue lags would otherwise give a member back its old address.
    let cat = match meta.fresh().await {
        Ok(cat) => cat,
        Err(e) => {
            tracing::debug!(error = %e, "node addresses: no fresh catalogue; retrying");
            return true;
        }
    };
    let mut again = false;
    for (group, raft) in stale {
        let moves = moved_in(&raft, &cat);
        if !moves.is_empty() && !take(groups, group, &raft, moves).await {
            again = true;
        }
    }
    again
}

/// Gives `group` the new addresses in `moves`, as one membership change (its voters stay);
/// whether it committed.
async fn take(groups: &Groups, group: u64, raft: &Raft, moves: Vec<Moved>) -> bool {
    if group != META_GROUP {
        // A quiet group's leader restarts its timers to replicate the change.
        groups.wake(group, raft);
    }
    let nodes: BTreeMap<u64, Node> = moves
        .iter()
        .map(|m| {
            (
                m.node,
                Node {
                    addr: m.new.clone(),
                },
            )
        })
        .collect();
    let change = raft.change_membership(ChangeMembers::SetNodes(nodes), false);
    let outcome = match tokio::time::timeout(CHANGE_TIMEOUT, change).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("not committed within {CHANGE_TIMEOUT:?}")),
    };
    for m in &moves {
        match &outcome {
            Ok(()) => {
                tracing::info!(group, node = m.node, old = %m.old, new = %m.new, "group membership takes a node's new address")
            }
            Err(e) => {
                tracing::warn!(group, node = m.node, old = %m.old, new = %m.new, error = %e, "group membership did not take a node's new address; retrying")
            }
        }
    }
    outcome.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::catalog::{NodeRecord, NodeRole};

    fn catalogue(nodes: &[(u64, &str)]) -> Catalog {
        let mut cat = Catalog::default();
        for (id, addr) in nodes {
            cat.nodes.insert(
                *id,
                NodeRecord {
                    id: *id,
                    name: format!("node-{id}"),
                    addr: addr.to_string(),
                    labels: BTreeMap::new(),
                    capacity_bytes: 1 << 30,
                    role: NodeRole::Voter,
                },
            );
        }
        cat
    }

    #[test]
    fn a_member_the_catalogue_has_elsewhere_moves() {
        let cat = catalogue(&[
            (1, "10.0.0.1:7001"),
            (2, "10.0.0.2:7001"),
            (3, "10.0.0.9:7001"),
        ]);
        let membership = [
            (1, "10.0.0.1:7001"),
            (2, "10.0.0.2:7001"),
            (3, "10.0.0.3:7001"),
        ];
        assert_eq!(
            moved(membership, &cat),
            vec![Moved {
                node: 3,
                old: "10.0.0.3:7001".into(),
                new: "10.0.0.9:7001".into()
            }]
        );
    }

    #[test]
    fn agreeing_and_unregistered_members_stay() {
        let cat = catalogue(&[(1, "10.0.0.1:7001"), (2, "10.0.0.2:7001")]);
        // Node 4 is a learner whose registration has not committed yet.
        let membership = [
            (1, "10.0.0.1:7001"),
            (2, "10.0.0.2:7001"),
            (4, "10.0.0.4:7001"),
        ];
        assert!(moved(membership, &cat).is_empty());
    }
}
