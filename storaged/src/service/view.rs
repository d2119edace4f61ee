//! Catalogue records → API messages, including each replica's live state as
//! reported by the volume group's members (asked in parallel, with a short bound).

use std::time::Duration;

use cairn_proto::cairn::v1 as pb;

use crate::meta::catalog::{Catalog, NodeRecord, NodeRole, VolumeKind, VolumeRecord};
use crate::meta::placement::Live;
use crate::node::status::LAG_ENTRIES;
use crate::node::{GroupStatus, StorageNode};

pub fn kind(k: VolumeKind) -> i32 {
    match k {
        VolumeKind::Replicated => pb::VolumeKind::Replicated as i32,
        VolumeKind::Local => pb::VolumeKind::Local as i32,
    }
}

pub fn node(cat: &Catalog, live: &Live, n: &NodeRecord, reachable: bool) -> pb::Node {
    pb::Node {
        id: n.id,
        name: n.name.clone(),
        addr: n.addr.clone(),
        labels: n
            .user_labels()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        capacity_bytes: n.capacity_bytes,
        allocated_bytes: cat.allocated(n.id),
        role: match n.role {
            NodeRole::Voter => "voter".into(),
            NodeRole::Learner => "learner".into(),
        },
        reachable,
        cordoned: n.cordoned(),
        draining: n.draining(),
        used_bytes: live.get(&n.id).map_or(0, |u| u.used),
        overcommit: n.overcommit(),
    }
}

fn progress(p: &crate::rebuild::Progress) -> pb::RebuildProgress {
    pb::RebuildProgress {
        copied_bytes: p.copied,
        total_bytes: p.total,
        percent: p.percent(),
        eta_seconds: p.eta().map_or(0, |d| d.as_secs_f64().ceil() as u64),
    }
}

async fn status_of(node: &StorageNode, addr: &str, group: u64) -> Option<GroupStatus> {
    crate::node::status::ask(node.channels(), addr, group, Duration::from_millis(400)).await
}

/// Builds the API view; `live` asks the members for replica states.
pub async fn volume(node: &StorageNode, cat: &Catalog, v: &VolumeRecord, live: bool) -> pb::Volume {
    let mut out = pb::Volume {
        id: v.id,
        name: v.name.clone(),
        size_bytes: v.size,
        replicas: v.replicas,
        kind: kind(v.kind),
        members: Vec::new(),
        leader_node_id: 0,
        health: pb::VolumeHealth::Unspecified as i32,
        attachments: v
            .attachments
            .iter()
            .map(|a| pb::Attachment {
                node_name: a.node_name.clone(),
                readonly: a.readonly,
                multi_node: a.multi_node,
                generation: a.generation,
            })
            .collect(),
        labels: crate::meta::stored::api_labels(v).into_iter().collect(),
        created_unix: v.created_unix,
        source: v.source().map(|s| s.to_string()).unwrap_or_default(),
        health_reason: String::new(),
        zone_warning: crate::meta::placement::zone_warning(cat, v).unwrap_or_default(),
    };
    let name_of = |id: u64| {
        cat.nodes
            .get(&id)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    if v.kind == VolumeKind::Local || !live {
        out.members = v
            .members
            .iter()
            .map(|m| pb::Replica {
                node_id: *m,
                node_name: name_of(*m),
                state: pb::ReplicaState::Unspecified as i32,
                matched_index: 0,
                target_index: 0,
                rebuild: None,
                reason: String::new(),
            })
            .collect();
        if v.kind == VolumeKind::Local {
            out.health = pb::VolumeHealth::Healthy as i32;
        }
        return out;
    }
    let asks = v.members.iter().map(|m| {
        let addr = cat.nodes.get(m).map(|n| n.addr.clone()).unwrap_or_default();
        async move { (*m, status_of(node, &addr, v.id).await) }
    });
    let statuses: Vec<(u64, Option<GroupStatus>)> = futures::future::join_all(asks).await;
    let leader = statuses
        .iter()
        .find(|(id, s)| s.as_ref().is_some_and(|s| s.leader == Some(*id)))
        .and_then(|(id, s)| s.clone().map(|s| (*id, s)));
    let voters: &[u64] = leader.as_ref().map_or(&[], |(_, ls)| ls.voters.as_slice());
    let learners: &[u64] = leader
        .as_ref()
        .map_or(&[], |(_, ls)| ls.learners.as_slice());
    let target = leader
        .as_ref()
        .and_then(|(_, ls)| ls.last_log_index)
        .unwrap_or(0);
    let mut up_to_date = 0u32;
    let mut failures = Vec::new();
    for (id, s) in &statuses {
        use pb::ReplicaState as State;
        let failed = s.as_ref().and_then(|s| s.open_error.clone());
        let (state, matched) = match (&leader, s) {
            (_, None) => (State::Unreachable, 0),
            (_, Some(_)) if failed.is_some() => (State::Failed, 0),
            (Some((lid, _)), Some(_)) if lid == id => (State::Leader, target),
            (Some((_, ls)), Some(_)) => {
                let m = ls.matched.get(id).copied().flatten();
                let joining = v.repair.is_some_and(|r| r.to == *id);
                match m {
                    _ if learners.contains(id) || (joining && !voters.contains(id)) => {
                        (State::Rebuilding, m.unwrap_or(0))
                    }
                    // Out of the group's membership (a replaced member about to leave).
                    _ if !voters.contains(id) => (State::Lagging, m.unwrap_or(0)),
                    Some(m) if target.saturating_sub(m) <= LAG_ENTRIES => (State::Follower, m),
                    Some(m) => (State::Lagging, m),
                    None => (State::Lagging, 0),
                }
            }
            (None, Some(_)) => (State::Follower, 0),
        };
        if matches!(state, State::Leader | State::Follower) && voters.contains(id) {
            up_to_date += 1;
        }
        out.members.push(pb::Replica {
            node_id: *id,
            node_name: name_of(*id),
            state: state as i32,
            matched_index: matched,
            target_index: if state == State::Rebuilding {
                target
            } else {
                0
            },
            rebuild: leader
                .as_ref()
                .and_then(|(_, ls)| ls.rebuilds.get(id))
                .map(progress),
            reason: failed.clone().unwrap_or_default(),
        });
        if let Some(reason) = failed {
            failures.push(format!(
                "replica on {} failed to open: {reason}",
                name_of(*id)
            ));
        }
    }
    if let Some((lid, _)) = &leader {
        out.leader_node_id = *lid;
    }
    // Degraded: fewer up-to-date voters than replicas, or a replacement under way.
    let rebuilding = v.repair.is_some() || !learners.is_empty();
    let health = match leader {
        None => pb::VolumeHealth::Unavailable,
        Some(_) if up_to_date >= v.replicas && !rebuilding => pb::VolumeHealth::Healthy,
        Some(_) => pb::VolumeHealth::Degraded,
    };
    out.health = health as i32;
    out.health_reason = health_reason(health, &failures, up_to_date, v, rebuilding);
    out
}

/// Why a volume is not healthy: replicas that failed to open first, else what the count
/// of members says; empty when healthy.
fn health_reason(
    health: pb::VolumeHealth,
    failures: &[String],
    up_to_date: u32,
    v: &VolumeRecord,
    rebuilding: bool,
) -> String {
    if health == pb::VolumeHealth::Healthy {
        return String::new();
    }
    if !failures.is_empty() {
        return failures.join("; ");
    }
    match health {
        pb::VolumeHealth::Unavailable => "no member leads the group (no quorum)".into(),
        _ if rebuilding => "a replica is being rebuilt".into(),
        _ => format!("{up_to_date} of {} replicas up to date", v.replicas),
    }
}
