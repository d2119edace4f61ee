//! Peers found again through the seeds: every few seconds each `--join` seed is resolved and
//! asked who answers there, so a node whose peers all moved at once still reaches them.
//!
//! A node back on a new address commits it through the meta leader (`node::addresses`), but
//! when a majority of the meta group moved at once (new pod IPs after a cluster restart) no
//! leader can be elected at the old addresses. The seeds (a headless Service's DNS name in
//! the manifests) resolve to where the nodes are now; each answers `GroupStatus` with its
//! own id, and the transport dials a member found elsewhere there (`AddressHints`) until its
//! membership has the new address. A wrong hint cannot misroute a message: every Raft
//! message names its target, and a node refuses one for another id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::Duration;

use crate::node::{StorageNode, status};
use crate::raft::{ChannelCache, META_GROUP};

/// Between two probes of the seeds.
const ROUND: Duration = Duration::from_secs(3);
/// Bound on one seed's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Probes the node's seeds every `ROUND` while the node lives (nothing without seeds).
pub async fn follow(node: Weak<StorageNode>) {
    let (me, seeds, channels) = match node.upgrade() {
        Some(n) => (n.cfg().id, n.cfg().join.clone(), n.channels().clone()),
        None => return,
    };
    if seeds.is_empty() {
        return;
    }
    loop {
        tokio::time::sleep(ROUND).await;
        let Some(members) = node.upgrade().map(|n| n.group_status(META_GROUP).addrs) else {
            return;
        };
        let found = probe(&seeds, &channels, me).await;
        apply(&found, &members, &channels).await;
    }
}

/// Who answers at each address the seeds resolve to now (id → address), this node left out.
async fn probe(seeds: &[String], channels: &ChannelCache, me: u64) -> BTreeMap<u64, String> {
    let mut addrs = BTreeSet::new();
    for seed in seeds {
        match crate::peers::resolve(seed).await {
            Ok(found) => addrs.extend(found),
            Err(e) => tracing::debug!(seed, error = %e, "seed does not resolve"),
        }
    }
    let asks = addrs.into_iter().map(|a| async move {
        let addr = a.to_string();
        let status = status::ask(channels, &addr, META_GROUP, ASK_TIMEOUT).await;
        status.map(|s| (s.node_id, addr))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|(id, _)| *id != 0 && *id != me)
        .collect()
}

/// Hints each member found away from its membership address, and clears the hint of one
/// found where its membership has it.
async fn apply(
    found: &BTreeMap<u64, String>,
    members: &BTreeMap<u64, String>,
    channels: &ChannelCache,
) {
    for (id, addr) in found {
        let Some(member_addr) = members.get(id) else {
            continue;
        };
        if same(member_addr, addr).await {
            if channels.hints().clear(*id) {
                tracing::info!(node = id, addr = %addr, "peer is back where its membership has it");
            }
        } else if channels.hints().set(*id, addr.clone()) {
            tracing::info!(node = id, membership = %member_addr, found = %addr, "peer found through the seeds away from its membership address: dialling it there");
        }
    }
}

/// Whether the membership entry `member` (an IP or a DNS name) names `addr`.
async fn same(member: &str, addr: &str) -> bool {
    if member == addr {
        return true;
    }
    let Ok(addr) = addr.parse() else {
        return false;
    };
    crate::peers::resolve(member)
        .await
        .is_ok_and(|r| r.contains(&addr))
}
