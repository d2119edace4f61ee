//! How a node started without `--node-id` gets its Raft id: from its data dir's stamp, as one
//! of the first `--bootstrap-expect` seed addresses, or as a fresh id joining a running cluster.
//!
//! The seeds are the `--join` entries; each may be a DNS name that resolves to many nodes
//! (a headless Service of the storaged DaemonSet). Every start without an id loops:
//! 1. resolve every seed (names that do not resolve yet are skipped this round);
//! 2. with `--bootstrap-expect N`, once N addresses are known (ours included), the N lowest
//!    sorted are the first cluster's voters, ids 1..=N in that order: the same answer on
//!    every node that sees the same addresses. A node among them starts as that id with
//!    those voters, exactly as `--node-id K --initial-cluster ...` would, unless a peer's
//!    view of the meta group shows id K in use (registered, or acknowledged entries: the
//!    issue-18 rule of `identity`), which means this data dir was wiped;
//! 3. else, when a peer reports a meta group with voters, the node joins that cluster under
//!    a fresh random id (a learner, as `--join` always made it); else it waits a round.
//!
//! The id and the initial voters are written into the stamp at the first start
//! (`identity`), so a restart keeps them whatever DNS says then; a wiped data dir has no
//! stamp and never gets its old id back: it finds the running cluster and joins anew.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::identity;
use crate::node::{GroupStatus, status};
use crate::raft::{ChannelCache, META_GROUP};
use crate::{Error, Result};

/// How long one seed may take to answer the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait between two rounds while no cluster is found and too few seeds are known.
const ROUND: Duration = Duration::from_secs(1);
/// Fresh ids are drawn from [FRESH_MIN, FRESH_MAX): far above any bootstrap id, below
/// 2^53 so that every JSON reader keeps them exact.
const FRESH_MIN: u64 = 1 << 32;
const FRESH_MAX: u64 = 1 << 53;

/// What a node without `--node-id` was told.
pub struct Seeds<'a> {
    pub data_dir: &'a Path,
    /// `--join` entries (`host:port`, DNS names allowed).
    pub seeds: &'a [String],
    /// `--bootstrap-expect`: how many seeds form the first cluster (`None`: only join).
    pub expect: Option<usize>,
    /// This node's `--advertise` address, as the seeds resolve to it.
    pub advertise: &'a str,
}

/// The identity a start uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: u64,
    /// The initial meta voters (empty: join a running cluster as a learner).
    pub initial_cluster: BTreeMap<u64, String>,
}

/// The ids 1..=n of the first cluster: the `n` lowest of `known` in order; `None` while
/// fewer are known.
pub fn first_voters(known: &BTreeSet<SocketAddr>, n: usize) -> Option<BTreeMap<u64, String>> {
    (n > 0 && known.len() >= n).then(|| {
        (1u64..)
            .zip(known.iter().take(n).map(|a| a.to_string()))
            .collect()
    })
}

/// The Raft id for this start (see the module comment).
pub async fn plan(seeds: Seeds<'_>, channels: &ChannelCache) -> Result<Plan> {
    if let Some(stamp) = identity::read_stamp(seeds.data_dir)? {
        tracing::info!(node = stamp.node_id, data_dir = %seeds.data_dir.display(), "node id from the data dir's stamp");
        return Ok(Plan {
            id: stamp.node_id,
            initial_cluster: stamp.initial_cluster,
        });
    }
    let me = crate::peers::resolve_retrying("advertise", seeds.advertise).await;
    for round in 1u64.. {
        let mut known: BTreeSet<SocketAddr> = me.iter().take(1).copied().collect();
        let mut unresolved = Vec::new();
        for seed in seeds.seeds {
            match crate::peers::resolve(seed).await {
                Ok(addrs) => known.extend(addrs.into_iter().filter(|a| !me.contains(a))),
                Err(e) => unresolved.push(format!("{seed}: {e}")),
            }
        }
        let others: Vec<SocketAddr> = known.iter().filter(|a| !me.contains(a)).copied().collect();
        let statuses = probe(&others, channels).await;
        let voters = seeds.expect.and_then(|n| first_voters(&known, n));
        let mine = voters.as_ref().and_then(|v| {
            v.iter()
                .find(|(_, a)| a.parse().is_ok_and(|a: SocketAddr| me.contains(&a)))
                .map(|(id, _)| *id)
        });
        // Our slot among the first voters, unless a peer shows that id in use: registered,
        // or acknowledged entries. Then this data dir was wiped, and the old id is not ours.
        let in_use = |id: u64| statuses.iter().any(|(_, s)| identity::knows(s, id));
        if let (Some(id), Some(voters)) = (mine, &voters)
            && !in_use(id)
        {
            tracing::info!(
                node = id,
                ?voters,
                "bootstrapping the first cluster from the seeds"
            );
            return Ok(Plan {
                id,
                initial_cluster: voters.clone(),
            });
        }
        if let Some((member, _)) = statuses.iter().find(|(_, s)| !s.voters.is_empty()) {
            let id = rand::random_range(FRESH_MIN..FRESH_MAX);
            if let Some(old) = mine {
                tracing::warn!(
                    node = id,
                    old,
                    "this node's seed slot is in use (its data dir was wiped?): joining under a fresh node id"
                );
            }
            tracing::info!(node = id, via = %member, "a cluster is running: joining it under a fresh node id");
            return Ok(Plan {
                id,
                initial_cluster: BTreeMap::new(),
            });
        }
        // Loud every 10 rounds: a cluster that never forms is a configuration to fix.
        if round % 10 == 1 {
            tracing::warn!(
                round,
                known = known.len(),
                expect = seeds.expect,
                ?unresolved,
                "no running cluster at the seeds and not among the first to bootstrap; waiting"
            );
        }
        tokio::time::sleep(ROUND).await;
    }
    Err(Error::Internal("the discovery loop does not end".into()))
}

/// The meta group as each of `addrs` sees it (those that answered).
async fn probe(addrs: &[SocketAddr], channels: &ChannelCache) -> Vec<(SocketAddr, GroupStatus)> {
    let asks = addrs.iter().map(|a| async move {
        let s = status::ask(channels, &a.to_string(), META_GROUP, PROBE_TIMEOUT).await;
        s.map(|s| (*a, s))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_first_voters_are_the_lowest_addresses_in_order() {
        let known = addrs(&["10.0.0.3:7001", "10.0.0.1:7001", "10.0.0.2:7001"]);
        assert_eq!(first_voters(&known, 4), None);
        assert_eq!(first_voters(&known, 0), None);
        let v = first_voters(&known, 2).unwrap();
        assert_eq!(
            v,
            BTreeMap::from([(1, "10.0.0.1:7001".into()), (2, "10.0.0.2:7001".into())])
        );
        // Every node computes the same set, whatever order DNS answered in.
        let again = addrs(&["10.0.0.2:7001", "10.0.0.3:7001", "10.0.0.1:7001"]);
        assert_eq!(first_voters(&again, 3), first_voters(&known, 3));
    }

    #[tokio::test]
    async fn a_stamped_dir_keeps_its_id_and_voters() {
        let dir = tempfile::tempdir().unwrap();
        let voters = BTreeMap::from([(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".into())]);
        identity::write_stamp(dir.path(), 2, &voters, &Default::default()).unwrap();
        let seeds = Seeds {
            data_dir: dir.path(),
            seeds: &["nowhere.invalid:1".into()],
            expect: Some(3),
            advertise: "127.0.0.1:2",
        };
        let plan = plan(seeds, &ChannelCache::new(cairn_client::Security::Insecure))
            .await
            .unwrap();
        assert_eq!(
            plan,
            Plan {
                id: 2,
                initial_cluster: voters
            }
        );
    }
}
