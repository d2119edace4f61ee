//! Node scheduling on the meta leader: cordon and uncordon (no new replicas on a node),
//! and drain (cordon, then the repair loop moves every replica off the node).

use cairn_proto::cairn::v1 as pb;

use crate::meta::catalog::{Catalog, MetaCommand, MetaReply, NodeRecord, VolumeKind};
use crate::meta::placement;
use crate::node::StorageNode;
use crate::service::{validate, view};
use crate::{Error, Result};

async fn lookup(node: &StorageNode, name: &str) -> Result<(Catalog, NodeRecord)> {
    validate::name("name", name)?;
    let cat = node.read_catalog().await?;
    let n = cat
        .node_by_name(name)
        .cloned()
        .ok_or_else(|| Error::not_found("node", name))?;
    Ok((cat, n))
}

async fn set(node: &StorageNode, id: u64, cordoned: bool, draining: bool) -> Result<pb::Node> {
    match node
        .propose_meta(MetaCommand::SetNodeSchedule {
            id,
            cordoned,
            draining,
        })
        .await?
    {
        MetaReply::Node(n) => Ok(view::node(&node.catalog(), &node.live_usage(), &n, true)),
        other => Err(Error::Internal(format!("unexpected meta reply {other:?}"))),
    }
}

/// Cordons (`cordon`) or uncordons the node named `name`; an uncordon ends a drain.
pub async fn cordon(node: &StorageNode, name: &str, cordon: bool) -> Result<pb::Node> {
    let (_, n) = lookup(node, name).await?;
    let draining = cordon && n.draining();
    let out = set(node, n.id, cordon, draining).await?;
    tracing::info!(node = %name, cordon, "node schedule changed");
    Ok(out)
}

/// Drains the node named `name`: refused (FAILED_PRECONDITION) when a replica on it
/// has nowhere to go; else cordoned and marked draining, and the repair loop moves
/// its replicas. Returns the node and how many replicas are to move.
pub async fn drain(node: &StorageNode, name: &str) -> Result<pb::DrainNodeResponse> {
    let (cat, n) = lookup(node, name).await?;
    let held: Vec<_> = cat
        .volumes
        .values()
        .filter(|v| v.members.contains(&n.id))
        .collect();
    let live = node.live_usage();
    for v in &held {
        if v.kind == VolumeKind::Local {
            return Err(Error::FailedPrecondition(format!(
                "node `{name}` holds local volume `{}`, which cannot move",
                v.name
            )));
        }
        if v.repair.is_some_and(|r| r.from == n.id) {
            continue;
        }
        if placement::replacement(&cat, v, n.id, &live, &|id| id == n.id).is_none() {
            return Err(Error::FailedPrecondition(format!(
                "no node can take the replica of volume `{}` on node `{name}` \
                 (replicas go to distinct, uncordoned nodes with {} bytes free)",
                v.name, v.size
            )));
        }
    }
    let out = set(node, n.id, true, true).await?;
    tracing::info!(node = %name, replicas = held.len(), "node draining");
    Ok(pb::DrainNodeResponse {
        node: Some(out),
        replicas_to_move: held.len() as u32,
    })
}
