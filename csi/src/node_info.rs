//! NodeGetInfo's answer: this node's id and topology (its zone, from storaged's catalogue),
//! waited for with a bound while storaged cannot list this node yet, never answered without.

use std::collections::HashMap;
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use cairn_proto::csi::v1 as csi;
use tokio::time::Instant;
use tonic::Code;

use crate::error::{CsiError, Result};
use crate::params::{TOPOLOGY_NODE_KEY, TOPOLOGY_ZONE_KEY};
use crate::storaged::VolumeBackend;

/// How long NodeGetInfo waits for storaged to list this node: well under the kubelet's 2
/// minutes for the call (`csiTimeout` in kubelet's pkg/volume/csi/csi_plugin.go).
pub const INFO_WAIT: Duration = Duration::from_secs(90);
/// The first pause between two attempts; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Given up this long before the caller's deadline, so the caller reads our answer, not the
/// server's CANCELLED once the deadline passes.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Why an attempt did not give the answer: worth another one, or final.
enum Miss {
    Retry(String),
    Final(CsiError),
}

/// Storaged codes that say the call can never succeed as configured: no waiting on them.
/// (UNIMPLEMENTED is not one: a fresh storaged's waiting room answers it until its Raft runs.)
fn is_final(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
    )
}

/// The answer, built from this node's catalogue record.
fn answer(node_id: &str, max_volumes: i64, node: &pb::Node) -> csi::NodeGetInfoResponse {
    let mut segments = HashMap::from([(TOPOLOGY_NODE_KEY.to_string(), node_id.to_string())]);
    if let Some(zone) = node
        .labels
        .get("zone")
        .or_else(|| node.labels.get(TOPOLOGY_ZONE_KEY))
    {
        segments.insert(TOPOLOGY_ZONE_KEY.to_string(), zone.clone());
    }
    csi::NodeGetInfoResponse {
        node_id: node_id.to_string(),
        max_volumes_per_node: max_volumes,
        accessible_topology: Some(csi::Topology { segments }),
    }
}

/// One ListNodes within `limit`: this node's record, or why not.
async fn attempt(
    cluster: &dyn VolumeBackend,
    node_id: &str,
    limit: Duration,
) -> std::result::Result<pb::Node, Miss> {
    match tokio::time::timeout(limit, cluster.list_nodes()).await {
        Err(_) => Err(Miss::Retry(format!(
            "no answer to ListNodes within {limit:?}"
        ))),
        Ok(Err(s)) if is_final(s.code()) => Err(Miss::Final(CsiError::storaged("list nodes", s))),
        Ok(Err(s)) => Err(Miss::Retry(format!(
            "ListNodes failed: {:?}: {}",
            s.code(),
            s.message()
        ))),
        // Until its storaged has joined, the node is not in the catalogue: its labels (the
        // zone) are unknown, and an answer without them would be recorded in CSINode for good.
        Ok(Ok(nodes)) => nodes
            .into_iter()
            .find(|n| n.name == node_id)
            .ok_or_else(|| {
                Miss::Retry(format!(
                    "storaged does not list node {node_id} yet (it has not joined the cluster)"
                ))
            }),
    }
}

/// NodeGetInfo for `node_id`: retries with backoff while storaged cannot list the node, for
/// at most `budget`, or until shortly before `deadline` (the caller's) when that comes first.
/// Gives up with DEADLINE_EXCEEDED (the caller's deadline) or UNAVAILABLE (the budget).
pub async fn node_info(
    cluster: &dyn VolumeBackend,
    node_id: &str,
    max_volumes: i64,
    budget: Duration,
    deadline: Option<Duration>,
) -> Result<csi::NodeGetInfoResponse> {
    let start = Instant::now();
    let callers = deadline.map(|d| d.saturating_sub(DEADLINE_MARGIN));
    let limit = callers.map_or(budget, |d| d.min(budget));
    let by_caller = callers.is_some_and(|d| d < budget);
    let mut backoff = FIRST_BACKOFF;
    let mut attempt_no = 0u32;
    loop {
        attempt_no += 1;
        let left = limit.saturating_sub(start.elapsed());
        let reason = match attempt(cluster, node_id, left).await {
            Ok(node) => {
                if attempt_no > 1 {
                    tracing::info!(
                        node_id,
                        attempts = attempt_no,
                        waited_ms = start.elapsed().as_millis() as u64,
                        "storaged lists this node: NodeGetInfo answers"
                    );
                }
                return Ok(answer(node_id, max_volumes, &node));
            }
            Err(Miss::Final(e)) => return Err(e),
            Err(Miss::Retry(reason)) => reason,
        };
        let left = limit.saturating_sub(start.elapsed());
        if left < FIRST_BACKOFF {
            let waited = start.elapsed();
            let what = format!(
                "NodeGetInfo waited {waited:.1?} ({attempt_no} attempts) for storaged to list \
                 node {node_id} with its labels (the zone of its topology); last: {reason}"
            );
            tracing::warn!(
                node_id,
                attempts = attempt_no,
                waited_ms = waited.as_millis() as u64,
                by_caller_deadline = by_caller,
                reason = %reason,
                "NodeGetInfo gives up waiting for storaged"
            );
            return Err(if by_caller {
                CsiError::DeadlineExceeded(format!("{what}; the caller's deadline is near"))
            } else {
                CsiError::Unavailable(what)
            });
        }
        let pause = backoff.min(left);
        tracing::info!(
            node_id,
            attempt = attempt_no,
            waited_ms = start.elapsed().as_millis() as u64,
            retry_in_ms = pause.as_millis() as u64,
            left_ms = left.as_millis() as u64,
            reason = %reason,
            "NodeGetInfo waits for storaged to list this node"
        );
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::storaged::fake::FakeVolumes;

    fn fake() -> Arc<FakeVolumes> {
        Arc::new(FakeVolumes::with_nodes(&[
            ("node-1", Some("zone-a")),
            ("node-2", None),
        ]))
    }

    #[tokio::test]
    async fn a_listed_node_is_answered_at_once_with_its_zone_or_without_one() {
        let f = fake();
        let a = node_info(&*f, "node-1", 8, INFO_WAIT, None).await.unwrap();
        let seg = a.accessible_topology.unwrap().segments;
        assert_eq!((a.node_id.as_str(), a.max_volumes_per_node), ("node-1", 8));
        assert_eq!(seg[TOPOLOGY_ZONE_KEY], "zone-a");
        // A node that storaged lists without a zone has none: that answer is the truth.
        let b = node_info(&*f, "node-2", 8, INFO_WAIT, None).await.unwrap();
        let seg = b.accessible_topology.unwrap().segments;
        assert_eq!(seg.get(TOPOLOGY_ZONE_KEY), None);
        assert_eq!(seg[TOPOLOGY_NODE_KEY], "node-2");
    }

    #[tokio::test]
    async fn storaged_away_past_the_budget_is_unavailable_naming_what_was_awaited() {
        let f = fake();
        f.down.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let budget = Duration::from_millis(1500);
        let e = node_info(&*f, "node-1", 8, budget, None).await.unwrap_err();
        let waited = start.elapsed();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(
            waited >= budget - FIRST_BACKOFF,
            "gave up early: {waited:?}"
        );
        assert!(waited < budget + Duration::from_secs(1), "{waited:?}");
        let msg = e.to_string();
        assert!(msg.contains("node-1") && msg.contains("zone"), "{msg}");
        assert!(msg.contains("ListNodes failed: Unavailable"), "{msg}");
    }

    #[tokio::test]
    async fn a_node_not_yet_listed_is_waited_for_until_the_callers_deadline() {
        let f = fake();
        let start = Instant::now();
        let deadline = Duration::from_secs(2);
        let e = node_info(&*f, "node-9", 8, INFO_WAIT, Some(deadline))
            .await
            .unwrap_err();
        let waited = start.elapsed();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert!(
            waited < deadline,
            "answered after the caller left: {waited:?}"
        );
        assert!(
            waited >= deadline - DEADLINE_MARGIN - FIRST_BACKOFF,
            "{waited:?}"
        );
        assert!(e.to_string().contains("does not list node node-9"), "{e}");
    }

    #[tokio::test]
    async fn storaged_coming_back_is_answered_with_the_zone() {
        let f = fake();
        f.down.store(true, Ordering::SeqCst);
        let call = tokio::spawn({
            let f = f.clone();
            async move { node_info(&*f, "node-1", 8, INFO_WAIT, None).await }
        });
        // The call is waiting (storaged is down) until storaged answers again.
        tokio::task::yield_now().await;
        assert!(!call.is_finished());
        f.down.store(false, Ordering::SeqCst);
        let a = tokio::time::timeout(MAX_BACKOFF * 2, call)
            .await
            .expect("answered once storaged is back")
            .unwrap()
            .unwrap();
        let seg = a.accessible_topology.unwrap().segments;
        assert_eq!(seg[TOPOLOGY_ZONE_KEY], "zone-a");
    }
}
