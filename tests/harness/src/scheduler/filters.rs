//! The scheduler's node filters (readiness, resources, node selector and
//! affinity, taints) and scoring; volume filters live in `volume_binding`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};

use crate::registry::quantity;

/// Why a node was filtered out; the text is upstream's aggregated reason.
pub type Reason = String;

fn terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn node_ready(node: &Node) -> Result<(), Reason> {
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Err("node(s) were unschedulable".into());
    }
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        Ok(())
    } else {
        Err("node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into())
    }
}

/// (millicpu, memory bytes) a pod requests: the sum over containers, or the
/// largest init container if that is more.
pub fn pod_requests(pod: &Pod) -> (i64, i64) {
    let req = |c: &k8s_openapi::api::core::v1::Container, r: &str| {
        c.resources
            .as_ref()
            .and_then(|x| x.requests.as_ref())
            .and_then(|m| m.get(r))
            .and_then(|q| quantity::parse(&q.0))
    };
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let mut cpu: i64 = spec
        .containers
        .iter()
        .filter_map(|c| req(c, "cpu"))
        .map(|q| q.milli())
        .sum();
    let mut mem: i64 = spec
        .containers
        .iter()
        .filter_map(|c| req(c, "memory"))
        .map(|q| q.value())
        .sum();
    for c in spec.init_containers.iter().flatten() {
        cpu = cpu.max(req(c, "cpu").map_or(0, |q| q.milli()));
        mem = mem.max(req(c, "memory").map_or(0, |q| q.value()));
    }
    (cpu, mem)
}

/// (millicpu, memory bytes, pods) allocatable on the node.
pub fn allocatable(node: &Node) -> (i64, i64, i64) {
    let a = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    let get = |k: &str| a.get(k).and_then(|q| quantity::parse(&q.0));
    (
        get("cpu").map_or(0, |q| q.milli()),
        get("memory").map_or(0, |q| q.value()),
        get("pods").map_or(110, |q| q.value()),
    )
}

/// Pods already placed on `node` (not terminal), including ones assumed by this scheduler pass.
pub fn pods_on<'a>(node: &str, pods: &'a [Pod]) -> impl Iterator<Item = &'a Pod> {
    let node = node.to_string();
    pods.iter().filter(move |p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()) && !terminal(p)
    })
}

pub fn fits_resources(pod: &Pod, node: &Node, pods: &[Pod]) -> Result<(), Reason> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let (acpu, amem, apods) = allocatable(node);
    let (mut ucpu, mut umem, mut count) = (0, 0, 0);
    for p in pods_on(&name, pods) {
        let (c, m) = pod_requests(p);
        ucpu += c;
        umem += m;
        count += 1;
    }
    let (c, m) = pod_requests(pod);
    if count + 1 > apods {
        return Err("Too many pods".into());
    }
    if ucpu + c > acpu {
        return Err("Insufficient cpu".into());
    }
    if umem + m > amem {
        return Err("Insufficient memory".into());
    }
    Ok(())
}

pub fn matches_node_selector(pod: &Pod, node: &Node) -> Result<(), Reason> {
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let sel_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let aff_ok = match spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
        Some(req) => crate::pvutil::node_selector_admits(req, node),
        None => true,
    };
    if sel_ok && aff_ok {
        Ok(())
    } else {
        Err("node(s) didn't match Pod's node affinity/selector".into())
    }
}

fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if t.effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let op = t.operator.as_deref().unwrap_or("Equal");
    match t.key.as_deref() {
        None | Some("") => op == "Exists",
        Some(k) if k != taint.key => false,
        Some(_) => {
            op == "Exists"
                || t.value.as_deref().unwrap_or_default()
                    == taint.value.as_deref().unwrap_or_default()
        }
    }
}

pub fn tolerates_taints(pod: &Pod, node: &Node) -> Result<(), Reason> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    for taint in node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
    {
        if taint.effect == "PreferNoSchedule" {
            continue;
        }
        if !tolerations.iter().any(|t| tolerates(t, &taint)) {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

fn owner_uid(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

/// Least-allocated score (0..100) plus a spreading penalty per sibling of
/// the same controller already on the node.
pub fn score(pod: &Pod, node: &Node, pods: &[Pod]) -> i64 {
    let name = node.metadata.name.clone().unwrap_or_default();
    let (acpu, amem, _) = allocatable(node);
    let (mut ucpu, mut umem) = pod_requests(pod);
    let owner = owner_uid(pod);
    let mut siblings = 0;
    for p in pods_on(&name, pods) {
        let (c, m) = pod_requests(p);
        ucpu += c;
        umem += m;
        if owner.is_some() && owner_uid(p) == owner {
            siblings += 1;
        }
    }
    let free = |a: i64, u: i64| {
        if a <= 0 {
            0
        } else {
            ((a - u).max(0) * 100) / a
        }
    };
    (free(acpu, ucpu) + free(amem, umem)) / 2 - 50 * siblings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(extra: serde_json::Value) -> Node {
        let mut n = json!({"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1", "disk": "ssd"}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3"},
                "conditions": [{"type": "Ready", "status": "True"}]}});
        json_patch::merge(&mut n, &extra);
        serde_json::from_value(n).unwrap()
    }

    fn pod(extra: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        json_patch::merge(&mut p, &extra);
        serde_json::from_value(p).unwrap()
    }

    #[test]
    fn filter_node_ready() {
        assert!(node_ready(&node(json!({}))).is_ok());
        assert!(
            node_ready(&node(
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
            ))
            .is_err()
        );
        assert!(node_ready(&node(json!({"spec": {"unschedulable": true}}))).is_err());
    }

    #[test]
    fn filter_resources() {
        let big = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "3"}}}]}}),
        );
        assert_eq!(
            fits_resources(&big, &node(json!({})), &[]).unwrap_err(),
            "Insufficient cpu"
        );
        let mem = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"memory": "5Gi"}}}]}}),
        );
        assert_eq!(
            fits_resources(&mem, &node(json!({})), &[]).unwrap_err(),
            "Insufficient memory"
        );
        let small = pod(
            json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}}),
        );
        let placed = pod(
            json!({"spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1500m"}}}]}}),
        );
        assert!(fits_resources(&small, &node(json!({})), &[]).is_ok());
        assert!(fits_resources(&small, &node(json!({})), &[placed]).is_err());
    }

    #[test]
    fn filter_node_selector_and_affinity() {
        assert!(
            matches_node_selector(
                &pod(json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                &node(json!({}))
            )
            .is_ok()
        );
        assert!(
            matches_node_selector(
                &pod(json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
                &node(json!({}))
            )
            .is_err()
        );
        let aff = |v: &str| {
            pod(
                json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [v]}]}]}}}}}),
            )
        };
        assert!(matches_node_selector(&aff("node-1"), &node(json!({}))).is_ok());
        assert!(matches_node_selector(&aff("node-2"), &node(json!({}))).is_err());
    }

    #[test]
    fn filter_taints_and_tolerations() {
        let tainted = node(
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        assert!(tolerates_taints(&pod(json!({})), &tainted).is_err());
        let tol = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}}),
        );
        assert!(tolerates_taints(&tol, &tainted).is_ok());
        let wrong = pod(
            json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web"}]}}),
        );
        assert!(tolerates_taints(&wrong, &tainted).is_err());
        let soft = node(json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}));
        assert!(tolerates_taints(&pod(json!({})), &soft).is_ok());
    }

    #[test]
    fn scoring_spreads_siblings() {
        let owned = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "u1", "controller": true}]}});
        let p = pod(owned.clone());
        let mut sibling = pod(owned);
        sibling.spec.as_mut().unwrap().node_name = Some("node-1".into());
        assert!(score(&p, &node(json!({})), &[sibling]) < score(&p, &node(json!({})), &[]));
    }
}
