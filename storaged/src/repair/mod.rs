//! Replica repair, run by the meta leader: replaces volume-group members on nodes down
//! longer than `--replica-down-timeout` or draining, one idempotent step per group a tick.

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
use crate::node::StorageNode;
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
    // Nothing down, draining or being repaired in the local catalogue: no linearizable read
    // and no copy of the catalogue this second (with a thousand idle volumes, that was most
    // of the meta leader's idle work). A change not applied here yet is seen next tick.
    let care = |cat: &Catalog| {
        cat.volumes
            .values()
            .any(|v| v.kind == VolumeKind::Replicated && needs_care(cat, v, &down))
    };
    if !node.with_catalog(care) {
        return Ok(());
    }
    let cat = node.read_catalog().await?;
    let mut inflight: BTreeMap<u64, usize> =
        cat.nodes.keys().map(|n| (*n, cat.repairs_to(*n))).collect();
    for vol in cat.volumes.values() {
        if vol.kind != VolumeKind::Replicated || !needs_care(&cat, vol, &down) {
            continue;
        }
        let group = leader_view(node, &cat, vol, &quiet).await;
        let busy = |n: u64| inflight.get(&n).copied().unwrap_or(0) >= cfg.concurrency;
        let live = node.live_usage();
        let step = plan::plan(
            &cat,
            vol,
            group.as_ref(),
            &Nodes {
                down: &down,
                busy: &busy,
                live: &live,
            },
        );
        if let Step::Start(r) = &step {
            *inflight.entry(r.to).or_default() += 1;
        }
        if let Err(e) = execute(node, &cat, vol, group.as_ref(), step).await {
            tracing::warn!(volume = %vol.name, group = vol.id, error = %e, "repair step failed; retrying next tick");
        }
    }
    Ok(())
}

/// A volume with a replacement under way, a member down or a member draining.
fn needs_care(cat: &Catalog, vol: &VolumeRecord, down: &dyn Fn(u64) -> bool) -> bool {
    vol.repair.is_some()
        || vol
            .members
            .iter()
            .any(|m| down(*m) || cat.nodes.get(m).is_some_and(|n| n.draining()))
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
