//! Replica repair, run by the meta leader: replaces volume-group members on nodes down
//! longer than `--replica-down-timeout`, failing to open their replica as long (051), or
//! draining, one idempotent step per group a tick.

pub mod change;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use self::change::MemberChange;
use self::plan::{GroupView, Nodes, Step, Wait};
use crate::meta::catalog::{Catalog, MetaCommand, VolumeKind, VolumeRecord};
use crate::meta::placement;
use crate::node::StorageNode;
use crate::node::failed::Failing;
use crate::{Error, Result};

/// How often the meta leader looks for work.
const TICK: Duration = Duration::from_secs(1);
/// How long a member may take to report its view of a group.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);
/// A node silent this long (10 heartbeats) is not asked about groups: a tick over many
/// volumes must not wait out a dead node's timeouts one volume after another.
const QUIET: Duration = Duration::from_secs(1);

/// The repair policy (`storaged` flags; the meta leader's are the ones in force).
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// A member unreachable this long is replaced (`--replica-down-timeout`).
    pub down_timeout: Duration,
    /// Replacements in flight towards one node at most, and volume snapshots one node
    /// sends at once (`--rebuild-concurrency`).
    pub concurrency: usize,
    /// Bytes a second of volume snapshots one node sends, over all its streams
    /// (`--rebuild-rate`; each node's own value is the one in force for it).
    pub rate: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            down_timeout: Duration::from_secs(300),
            concurrency: 2,
            rate: crate::rebuild::DEFAULT_RATE,
        }
    }
}

/// Runs forever; does work only while this node leads the meta group. Nothing is kept
/// between ticks but when this node became leader: every step is derived anew from
/// the committed catalogue and the groups' membership, so a new leader carries on.
/// Holds the node weakly: ends once the node is dropped.
pub async fn run(node: Weak<StorageNode>) {
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if !node.meta_raft().is_leader() {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        if let Err(e) = tick(&node, since).await {
            tracing::debug!(error = %e, "repair tick skipped");
        }
    }
}

/// How long ago the meta leader last heard from each node (a heartbeat or append
/// answered); never longer than since it started leading (it knows nothing before).
fn silent_for(node: &StorageNode, since: Instant) -> BTreeMap<u64, Duration> {
    use openraft::Instant as _;
    let m = node.meta_raft().metrics().borrow_watched().clone();
    let leading = since.elapsed();
    m.heartbeat
        .map(|h| {
            h.into_iter()
                .map(|(id, t)| (id, t.map_or(leading, |t| t.elapsed().min(leading))))
                .collect()
        })
        .unwrap_or_default()
}

async fn tick(node: &Arc<StorageNode>, since: Instant) -> Result<()> {
    let cfg = node.cfg().repair.clone();
    let me = node.cfg().id;
    let silent = silent_for(node, since);
    let silent_for = |n: u64| {
        if n == me {
            Duration::ZERO
        } else {
            silent.get(&n).copied().unwrap_or(since.elapsed())
        }
    };
    let down = |n: u64| silent_for(n) > cfg.down_timeout;
    let quiet = |n: u64| silent_for(n) > QUIET;
    // Replicas failing to open, from the nodes' pings: none, and no work, as a rule.
    let failing = node.failing_replicas();
    let lost = Lost {
        down: &down,
        failing: &failing,
        timeout: cfg.down_timeout,
    };
    // Nothing lost, draining or being repaired in the local catalogue: no linearizable read
    // and no copy of the catalogue this second (with a thousand idle volumes, that was most
    // of the meta leader's idle work). A change not applied here yet is seen next tick.
    let care = |cat: &Catalog| cat.volumes.values().any(|v| lost.needs_care(cat, v));
    if !node.with_catalog(care) {
        return Ok(());
    }
    let cat = node.read_catalog().await?;
    let mut inflight: BTreeMap<u64, usize> =
        cat.nodes.keys().map(|n| (*n, cat.repairs_to(*n))).collect();
    for vol in cat.volumes.values() {
        if !lost.needs_care(&cat, vol) {
            continue;
        }
        let group = leader_view(node, &cat, vol, &quiet).await;
        let busy = |n: u64| inflight.get(&n).copied().unwrap_or(0) >= cfg.concurrency;
        let live = node.live_usage();
        let step = lost.plan(&cat, vol, group.as_ref(), &busy, &live);
        // A replacement of a replica that fails to open, on a node that is up: say why.
        let mut failed_open = None;
        if let Step::Start(r) = &step {
            *inflight.entry(r.to).or_default() += 1;
            failed_open = lost.failed_only(r.from, vol.id).map(|why| (*r, why));
        }
        match execute(node, &cat, vol, group.as_ref(), step).await {
            Err(e) => {
                tracing::warn!(volume = %vol.name, group = vol.id, error = %e, "repair step failed; retrying next tick");
            }
            Ok(()) => {
                if let Some((r, why)) = failed_open {
                    tracing::warn!(volume = %vol.name, group = vol.id, node = r.from, to = r.to,
                        "replica on node {} failed to open: {why}; replacing it", r.from);
                }
            }
        }
    }
    Ok(())
}

/// Which members the repair loop takes as lost, volume by volume: those on a node down,
/// and those whose replica of that volume has failed to open for longer than the down
/// timeout (the node keeps its other replicas).
struct Lost<'a> {
    down: &'a (dyn Fn(u64) -> bool + Sync),
    failing: &'a Failing,
    timeout: Duration,
}

impl Lost<'_> {
    /// Why `node`'s replica of `group` is lost although the node is up: it failed to
    /// open for longer than the timeout (the last error).
    fn failed_only(&self, node: u64, group: u64) -> Option<&str> {
        if (self.down)(node) {
            return None;
        }
        let (failing_for, reason) = self.failing.get(&(node, group))?;
        (*failing_for > self.timeout).then_some(reason.as_str())
    }

    /// Whether `node`'s replica of `group` is lost.
    fn member(&self, node: u64, group: u64) -> bool {
        (self.down)(node) || self.failed_only(node, group).is_some()
    }

    /// A replicated volume with a replacement under way, or a member lost or draining while
    /// another member holds a copy to rebuild from (with every member lost, as for a 1-replica
    /// volume on a dead node, nothing can be done until one comes back).
    fn needs_care(&self, cat: &Catalog, vol: &VolumeRecord) -> bool {
        let lost = |m: &u64| self.member(*m, vol.id);
        vol.kind == VolumeKind::Replicated
            && (vol.repair.is_some()
                || (vol
                    .members
                    .iter()
                    .any(|m| lost(m) || cat.nodes.get(m).is_some_and(|n| n.draining()))
                    && !vol.members.iter().all(lost)))
    }

    /// The planner's next step for `vol`, with its own members' losses.
    fn plan(
        &self,
        cat: &Catalog,
        vol: &VolumeRecord,
        group: Option<&GroupView>,
        busy: &dyn Fn(u64) -> bool,
        live: &placement::Live,
    ) -> Step {
        let down = |n: u64| self.member(n, vol.id);
        plan::plan(
            cat,
            vol,
            group,
            &Nodes {
                down: &down,
                busy,
                live,
            },
        )
    }
}

/// The group as its leader reports it, asking every member not `quiet` at once.
async fn leader_view(
    node: &StorageNode,
    cat: &Catalog,
    vol: &VolumeRecord,
    quiet: &(dyn Fn(u64) -> bool + Sync),
) -> Option<GroupView> {
    let asks = vol.members.iter().filter(|m| !quiet(**m)).filter_map(|m| {
        let addr = cat.nodes.get(m)?.addr.clone();
        Some(async move {
            let s = crate::node::status::ask(node.channels(), &addr, vol.id, ASK_TIMEOUT).await?;
            GroupView::from_leader(*m, &s)
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .max_by_key(|g| g.last_log_index)
}

async fn execute(
    node: &StorageNode,
    cat: &Catalog,
    vol: &VolumeRecord,
    group: Option<&GroupView>,
    step: Step,
) -> Result<()> {
    let name = vol.name.clone();
    let change = |c: MemberChange| async move {
        let leader = group
            .and_then(|g| cat.nodes.get(&g.leader))
            .ok_or_else(|| Error::Unavailable(format!("volume `{name}` has no leader")))?;
        change::send(node.channels(), &leader.addr, vol.id, &c).await
    };
    match step {
        Step::Idle => Ok(()),
        Step::Wait(Wait::CatchingUp {
            node: to,
            matched,
            target,
        }) => {
            tracing::debug!(volume = %vol.name, group = vol.id, node = to, matched, target, "replacement catching up");
            Ok(())
        }
        Step::Wait(w) => {
            tracing::debug!(volume = %vol.name, group = vol.id, wait = ?w, "repair waits");
            Ok(())
        }
        Step::Start(r) => {
            node.propose_meta(MetaCommand::StartRepair {
                name: vol.name.clone(),
                from: r.from,
                to: r.to,
            })
            .await?;
            tracing::info!(volume = %vol.name, group = vol.id, from = r.from, to = r.to, "replica repair started");
            Ok(())
        }
        Step::AddLearner(to) => {
            let addr = cat
                .nodes
                .get(&to)
                .map(|n| n.addr.clone())
                .ok_or_else(|| Error::not_found("node", to.to_string()))?;
            change(MemberChange::AddLearner { id: to, addr }).await
        }
        Step::SetVoters(voters) => change(MemberChange::SetVoters(voters)).await,
        Step::RemoveLearner(n) => change(MemberChange::RemoveLearner(n)).await,
        Step::Finish(r) => {
            node.propose_meta(MetaCommand::FinishRepair {
                name: vol.name.clone(),
                from: r.from,
                to: r.to,
            })
            .await?;
            tracing::info!(volume = %vol.name, group = vol.id, from = r.from, to = r.to, "replica repair finished");
            Ok(())
        }
        Step::Abort(r) => {
            node.propose_meta(MetaCommand::AbortRepair {
                name: vol.name.clone(),
                from: r.from,
                to: r.to,
            })
            .await?;
            tracing::warn!(volume = %vol.name, group = vol.id, from = r.from, to = r.to, "replica repair aborted: the new member went down");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::catalog::Repair;
    use crate::repair::plan::tests::{cat, view};

    const TIMEOUT: Duration = Duration::from_secs(3);

    /// `cat(4)`'s volume `v` (group 1) and a second volume `w` (group 2), both on 1, 2, 3.
    fn two_volumes() -> Catalog {
        let mut c = cat(4);
        let mut w = c.volumes["v"].clone();
        (w.id, w.name) = (2, "w".into());
        c.volumes.insert("w".into(), w);
        c
    }

    fn step(c: &Catalog, vol: &str, down: &[u64], failing: &Failing) -> (bool, Step) {
        let down = |n: u64| down.contains(&n);
        let lost = Lost {
            down: &down,
            failing,
            timeout: TIMEOUT,
        };
        let g = view(1, &[1, 2, 3], &[], 100);
        let vol = &c.volumes[vol];
        (
            lost.needs_care(c, vol),
            lost.plan(c, vol, Some(&g), &|_| false, &Default::default()),
        )
    }

    fn failing(node: u64, group: u64, for_: Duration) -> Failing {
        [((node, group), (for_, "bad spool".to_string()))].into()
    }

    #[test]
    fn a_replica_failed_longer_than_the_timeout_is_replaced_on_another_node() {
        let c = two_volumes();
        let long = failing(3, 1, TIMEOUT + Duration::from_secs(1));
        let start = Step::Start(Repair { from: 3, to: 4 });
        assert_eq!(step(&c, "v", &[], &long), (true, start));
        // Its node is up and keeps its replica of `w`.
        assert_eq!(step(&c, "w", &[], &long), (false, Step::Idle));
        // Failed for less than the timeout: left alone.
        let short = failing(3, 1, TIMEOUT - Duration::from_millis(1));
        assert_eq!(step(&c, "v", &[], &short), (false, Step::Idle));
        assert_eq!(step(&c, "v", &[], &Failing::new()), (false, Step::Idle));
        // A down node is not a target, whatever failed where.
        assert_eq!(
            step(&c, "v", &[4], &long),
            (true, Step::Wait(plan::Wait::NoTarget { from: 3 }))
        );
    }

    #[test]
    fn a_volume_with_every_member_lost_needs_no_care_until_one_returns() {
        let c = two_volumes();
        let gone = |down: &[u64]| step(&c, "v", down, &Failing::new()).0;
        assert!(gone(&[3]), "one of three lost: rebuilt from the others");
        assert!(gone(&[2, 3]), "two of three lost: the third is a source");
        assert!(!gone(&[1, 2, 3]), "no copy left to rebuild from");
        // Every member's replica failed to open: the same.
        let mut f = failing(1, 1, TIMEOUT * 2);
        f.extend(failing(2, 1, TIMEOUT * 2));
        f.extend(failing(3, 1, TIMEOUT * 2));
        assert!(!step(&c, "v", &[], &f).0);
    }

    #[test]
    fn the_reason_is_given_only_for_a_member_lost_by_a_failed_open() {
        let down = |n: u64| n == 2;
        let mut f = failing(3, 1, TIMEOUT * 2);
        f.extend(failing(2, 1, TIMEOUT * 2));
        let lost = Lost {
            down: &down,
            failing: &f,
            timeout: TIMEOUT,
        };
        assert_eq!(lost.failed_only(3, 1), Some("bad spool"));
        assert_eq!(lost.failed_only(3, 2), None);
        // Down anyway: replaced as a lost node, without the failed-open reason.
        assert_eq!(lost.failed_only(2, 1), None);
        assert!(lost.member(2, 7) && lost.member(3, 1) && !lost.member(3, 2));
    }
}
