//! Peers found again through the seeds: every few seconds each `--join` seed is resolved and
//! asked who answers there, so a node whose peers all moved at once still reaches them.
//!
//! A node back on a new address commits it through the meta leader (`node::addresses`), but
//! when a majority of the meta group moved at once (new pod IPs after a cluster restart) no
//! leader can be elected at the old addresses. The seeds (a headless Service's DNS name in
//! the manifests) resolve to where the nodes are now; each answers `GroupStatus` with its
//! own id, and the transport dials each member where it was last found (`AddressHints`), in
//! every group: the meta group may already have a node's new address while a volume group,
//! which commits it only once it has a leader again, still lists the old one. A wrong hint
//! cannot misroute a message: every Raft message names its target, and a node refuses one
//! for another id.

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

/// Hints every member where it was found, so that each group dials it there (a hint lapses
/// 30 s after the seeds last found the member); logs a member found away from the meta
/// group's membership address, or back at it.
async fn apply(
    found: &BTreeMap<u64, String>,
    members: &BTreeMap<u64, String>,
    channels: &ChannelCache,
) {
    for (id, addr) in found {
        let Some(member_addr) = members.get(id) else {
            continue;
        };
        let news = channels.hints().set(*id, addr.clone());
        if !news {
            continue;
        }
        if same(member_addr, addr).await {
            tracing::info!(node = id, addr = %addr, "peer found through the seeds where its membership has it");
        } else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(u64, &str)]) -> BTreeMap<u64, String> {
        entries.iter().map(|(i, a)| (*i, a.to_string())).collect()
    }

    /// The meta group taking a node's new address must not send the other groups, whose
    /// memberships may still list the old one, back there (the cause of a CI failure: a
    /// volume group whose peers were all dialled at their old addresses could never elect).
    #[tokio::test]
    async fn a_member_stays_hinted_once_the_meta_membership_has_its_address() {
        let channels = ChannelCache::new(cairn_client::Security::Insecure);
        let found = map(&[(2, "127.0.0.1:7102"), (3, "127.0.0.1:7103")]);
        apply(
            &found,
            &map(&[(2, "127.0.0.1:7002"), (3, "127.0.0.1:7003")]),
            &channels,
        )
        .await;
        assert_eq!(channels.hints().get(2).as_deref(), Some("127.0.0.1:7102"));
        apply(
            &found,
            &map(&[(2, "127.0.0.1:7102"), (3, "127.0.0.1:7003")]),
            &channels,
        )
        .await;
        assert_eq!(channels.hints().get(2).as_deref(), Some("127.0.0.1:7102"));
        assert_eq!(channels.hints().get(3).as_deref(), Some("127.0.0.1:7103"));
        let moved_again = map(&[(2, "127.0.0.1:7202")]);
        apply(&moved_again, &map(&[(2, "127.0.0.1:7102")]), &channels).await;
        assert_eq!(channels.hints().get(2).as_deref(), Some("127.0.0.1:7202"));
    }

    #[tokio::test]
    async fn a_node_outside_the_meta_membership_is_not_hinted() {
        let channels = ChannelCache::new(cairn_client::Security::Insecure);
        apply(
            &map(&[(9, "127.0.0.1:7109")]),
            &map(&[(2, "127.0.0.1:7002")]),
            &channels,
        )
        .await;
        assert_eq!(channels.hints().get(9), None);
    }
}
