//! PV/PVC matching rules shared by the PV binder and the scheduler: class,
//! size, access modes, volume mode, selectors and node affinity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::registry::quantity;
use crate::registry::selectors::LabelSelector;

pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
pub const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

pub fn claim_class(pvc: &PersistentVolumeClaim) -> String {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

pub fn pv_class(pv: &PersistentVolume) -> String {
    pv.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .unwrap_or_default()
}

pub fn claim_request(pvc: &PersistentVolumeClaim) -> i64 {
    pvc.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| quantity::parse(&q.0))
        .map_or(0, |q| q.value())
}

pub fn pv_capacity(pv: &PersistentVolume) -> i64 {
    pv.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| quantity::parse(&q.0))
        .map_or(0, |q| q.value())
}

/// Whether the class delays binding until a pod is scheduled.
pub fn is_wffc(class: Option<&StorageClass>) -> bool {
    class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer")
}

/// Whether the PV's claimRef names this claim (by namespace and name, and uid if set).
pub fn pv_bound_to_claim(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let Some(cr) = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
        return false;
    };
    cr.name == pvc.metadata.name
        && cr.namespace == pvc.metadata.namespace
        && (cr.uid.as_deref().is_none_or(str::is_empty) || cr.uid == pvc.metadata.uid)
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = req.values.clone().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(w)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|w| w.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" { v > w } else { v < w }
        }
        _ => false,
    }
}

/// Whether a required NodeSelector (terms ORed, expressions ANDed) admits the node.
pub fn node_selector_admits(sel: &NodeSelector, node: &Node) -> bool {
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    sel.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.as_deref().unwrap_or_default();
        let fields = t.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            return false;
        }
        exprs
            .iter()
            .all(|r| requirement_matches(r, labels.get(&r.key)))
            && fields
                .iter()
                .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&name)))
    })
}

/// Whether the PV's required nodeAffinity admits the node (no affinity admits all).
pub fn pv_admits_node(pv: &PersistentVolume, node: &Node) -> bool {
    match pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
    {
        Some(sel) => node_selector_admits(sel, node),
        None => true,
    }
}

/// Whether `pv` could satisfy `pvc`, ignoring binding state.
pub fn pv_satisfies(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let (Some(ps), Some(cs)) = (pv.spec.as_ref(), pvc.spec.as_ref()) else {
        return false;
    };
    if pv.metadata.deletion_timestamp.is_some() || pv_class(pv) != claim_class(pvc) {
        return false;
    }
    if pv_capacity(pv) < claim_request(pvc) {
        return false;
    }
    let pv_modes = ps.access_modes.clone().unwrap_or_default();
    if !cs
        .access_modes
        .clone()
        .unwrap_or_default()
        .iter()
        .all(|m| pv_modes.contains(m))
    {
        return false;
    }
    let mode = |m: Option<&String>| m.cloned().unwrap_or_else(|| "Filesystem".into());
    if mode(ps.volume_mode.as_ref()) != mode(cs.volume_mode.as_ref()) {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let sel = LabelSelector::from_object(&serde_json::to_value(sel).unwrap_or_default());
        if !sel.matches_labels(&pv.metadata.labels.clone().unwrap_or_default()) {
            return false;
        }
    }
    true
}

/// The smallest PV that `pvc` may bind: pre-bound to it, or Available and
/// unclaimed. With `node`, only PVs whose affinity admits that node.
pub fn find_best_match<'a>(
    pvs: &'a [PersistentVolume],
    pvc: &PersistentVolumeClaim,
    node: Option<&Node>,
) -> Option<&'a PersistentVolume> {
    let mut candidates: Vec<&PersistentVolume> = pvs
        .iter()
        .filter(|pv| pv_satisfies(pv, pvc))
        .filter(|pv| node.is_none_or(|n| pv_admits_node(pv, n)))
        .filter(|pv| {
            let claimed = pv
                .spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some();
            let phase = pv
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            pv_bound_to_claim(pv, pvc) || (!claimed && phase == "Available")
        })
        .collect();
    if let Some(pre) = candidates.iter().find(|pv| pv_bound_to_claim(pv, pvc)) {
        return Some(pre);
    }
    candidates.sort_by_key(|pv| (pv_capacity(pv), pv.metadata.name.clone()));
    candidates.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pv(name: &str, size: &str, node: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local-storage", "local": {"path": "/x"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"}}))
        .unwrap()
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}}),
        )
        .unwrap()
    }

    #[test]
    fn smallest_matching_pv_admitting_the_node_wins() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": "c", "namespace": "d", "uid": "u"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-storage",
                "resources": {"requests": {"storage": "1Gi"}}}}),
        )
        .unwrap();
        let pvs = vec![
            pv("big", "10Gi", "node-1"),
            pv("small", "2Gi", "node-1"),
            pv("tiny", "500Mi", "node-1"),
            pv("other", "1Gi", "node-2"),
        ];
        assert_eq!(
            find_best_match(&pvs, &pvc, None)
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("other")
        );
        assert_eq!(
            find_best_match(&pvs, &pvc, Some(&node("node-1")))
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("small")
        );
        assert!(find_best_match(&pvs, &pvc, Some(&node("node-3"))).is_none());
    }
}
