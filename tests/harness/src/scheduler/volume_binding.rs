//! The scheduler's volume filter: bound PVs' node affinity, and for unbound
//! WaitForFirstConsumer claims a static PV on the node or provisioning there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, CSIStorageCapacity, StorageClass};

use super::filters::Reason;
use crate::pvutil::*;
use crate::registry::quantity;
use crate::registry::selectors::LabelSelector;

pub struct VolumeCtx<'a> {
    pub pvcs: &'a BTreeMap<(String, String), PersistentVolumeClaim>,
    pub pvs: &'a [PersistentVolume],
    pub classes: &'a BTreeMap<String, StorageClass>,
    pub drivers: &'a [CSIDriver],
    pub capacities: &'a [CSIStorageCapacity],
}

/// What the scheduler will do for one unbound claim on the chosen node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPlan {
    /// Pre-bind this static PV to the claim.
    StaticPv(String),
    /// Write selected-node and let the provisioner create a PV.
    Provision,
}

/// The pod's claims; errors (for every node) when one is missing, being
/// deleted, or an unbound claim of an Immediate class.
pub fn pod_claims(pod: &Pod, ctx: &VolumeCtx) -> Result<Vec<PersistentVolumeClaim>, Reason> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let Some(src) = v.persistent_volume_claim else {
            continue;
        };
        let claim = ctx
            .pvcs
            .get(&(ns.clone(), src.claim_name.clone()))
            .ok_or_else(|| format!("persistentvolumeclaim \"{}\" not found", src.claim_name))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!(
                "persistentvolumeclaim \"{}\" is being deleted",
                src.claim_name
            ));
        }
        let bound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty());
        if !bound && !is_wffc(ctx.classes.get(&claim_class(claim))) {
            return Err("pod has unbound immediate PersistentVolumeClaims".into());
        }
        out.push(claim.clone());
    }
    Ok(out)
}

fn allowed_topologies_admit(class: &StorageClass, node: &Node) -> bool {
    let terms = class.allowed_topologies.clone().unwrap_or_default();
    if terms.is_empty() {
        return true;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    terms.iter().any(|t| {
        t.match_label_expressions
            .iter()
            .flatten()
            .all(|e| labels.get(&e.key).is_some_and(|v| e.values.contains(v)))
    })
}

/// With `storageCapacity: true` on the driver, a CSIStorageCapacity for the
/// class whose topology admits the node must hold the request; none means none.
fn capacity_admits(class: &StorageClass, node: &Node, request: i64, ctx: &VolumeCtx) -> bool {
    let tracked = ctx.drivers.iter().any(|d| {
        d.metadata.name.as_deref() == Some(&class.provisioner)
            && d.spec.storage_capacity == Some(true)
    });
    if !tracked {
        return true;
    }
    let class_name = class.metadata.name.clone().unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    ctx.capacities.iter().any(|c| {
        if c.storage_class_name != class_name {
            return false;
        }
        let topo_ok = match &c.node_topology {
            Some(sel) => LabelSelector::from_object(&serde_json::to_value(sel).unwrap_or_default())
                .matches_labels(&labels),
            None => false,
        };
        let size = c
            .maximum_volume_size
            .as_ref()
            .or(c.capacity.as_ref())
            .and_then(|q| quantity::parse(&q.0))
            .map_or(0, |q| q.value());
        topo_ok && size >= request
    })
}

/// Checks one node for all of the pod's claims; returns the plan for the unbound ones.
pub fn check_node(
    claims: &[PersistentVolumeClaim],
    node: &Node,
    ctx: &VolumeCtx,
) -> Result<Vec<(PersistentVolumeClaim, ClaimPlan)>, Reason> {
    let mut plans = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for claim in claims {
        let vol = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .unwrap_or_default();
        if !vol.is_empty() {
            let pv = ctx
                .pvs
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&vol));
            match pv {
                Some(pv) if !pv_admits_node(pv, node) => {
                    return Err("node(s) had volume node affinity conflict".into());
                }
                Some(_) => continue,
                None => return Err(format!("persistentvolume \"{vol}\" not found")),
            }
        }
        let free: Vec<PersistentVolume> = ctx
            .pvs
            .iter()
            .filter(|p| !taken.contains(p.metadata.name.as_ref().unwrap_or(&String::new())))
            .cloned()
            .collect();
        if let Some(pv) = find_best_match(&free, claim, Some(node)) {
            let name = pv.metadata.name.clone().unwrap_or_default();
            taken.push(name.clone());
            plans.push((claim.clone(), ClaimPlan::StaticPv(name)));
            continue;
        }
        let class = ctx.classes.get(&claim_class(claim));
        match class {
            Some(c) if c.provisioner != NO_PROVISIONER => {
                if !allowed_topologies_admit(c, node) {
                    return Err(
                        "node(s) didn't match the allowed topologies of the storage class".into(),
                    );
                }
                if !capacity_admits(c, node, claim_request(claim), ctx) {
                    return Err("node(s) did not have enough free storage".into());
                }
                plans.push((claim.clone(), ClaimPlan::Provision));
            }
            _ => return Err("node(s) didn't find available persistent volumes to bind".into()),
        }
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str) -> Node {
        from(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "topology.cairn.dev/node": name}}}),
        )
    }

    fn claim(class: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        from(
            json!({"metadata": {"name": "data", "namespace": "d", "uid": "u"}, "spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": class, "volumeName": volume, "resources": {"requests": {"storage": "1Gi"}}}}),
        )
    }

    fn local_pv(name: &str, node: &str) -> PersistentVolume {
        from(
            json!({"metadata": {"name": name}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-storage", "local": {"path": "/x"}, "nodeAffinity": {"required": {"nodeSelectorTerms":
            [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}},
            "status": {"phase": "Available"}}),
        )
    }

    fn classes() -> BTreeMap<String, StorageClass> {
        let mut m = BTreeMap::new();
        m.insert("local-storage".into(), from(json!({"metadata": {"name": "local-storage"}, "provisioner": NO_PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer"})));
        m.insert("cairn-local".into(), from(json!({"metadata": {"name": "cairn-local"}, "provisioner": "csi.cairn.dev", "volumeBindingMode": "WaitForFirstConsumer",
            "allowedTopologies": [{"matchLabelExpressions": [{"key": "topology.cairn.dev/node", "values": ["node-1", "node-2"]}]}]})));
        m.insert("fast".into(), from(json!({"metadata": {"name": "fast"}, "provisioner": "csi.cairn.dev", "volumeBindingMode": "Immediate"})));
        m
    }

    #[test]
    fn bound_pv_affinity_and_static_match() {
        let pvs = vec![local_pv("pv-1", "node-1")];
        let (pvcs, classes) = (BTreeMap::new(), classes());
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &pvs,
            classes: &classes,
            drivers: &[],
            capacities: &[],
        };
        let bound = claim("local-storage", Some("pv-1"));
        assert!(check_node(std::slice::from_ref(&bound), &node("node-1"), &ctx).is_ok());
        assert_eq!(
            check_node(&[bound], &node("node-2"), &ctx).unwrap_err(),
            "node(s) had volume node affinity conflict"
        );
        let unbound = claim("local-storage", None);
        assert_eq!(
            check_node(std::slice::from_ref(&unbound), &node("node-1"), &ctx).unwrap()[0].1,
            ClaimPlan::StaticPv("pv-1".into())
        );
        assert!(check_node(&[unbound], &node("node-2"), &ctx).is_err());
    }

    #[test]
    fn provisioning_honours_topology_and_capacity() {
        let (pvcs, classes) = (BTreeMap::new(), classes());
        let c = claim("cairn-local", None);
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &[],
            classes: &classes,
            drivers: &[],
            capacities: &[],
        };
        assert_eq!(
            check_node(std::slice::from_ref(&c), &node("node-1"), &ctx).unwrap()[0].1,
            ClaimPlan::Provision
        );
        assert!(check_node(std::slice::from_ref(&c), &node("node-3"), &ctx).is_err());
        let drivers: Vec<CSIDriver> = vec![from(
            json!({"metadata": {"name": "csi.cairn.dev"}, "spec": {"storageCapacity": true}}),
        )];
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &[],
            classes: &classes,
            drivers: &drivers,
            capacities: &[],
        };
        assert_eq!(
            check_node(std::slice::from_ref(&c), &node("node-1"), &ctx).unwrap_err(),
            "node(s) did not have enough free storage"
        );
        let caps: Vec<CSIStorageCapacity> = vec![from(
            json!({"metadata": {"name": "c1", "namespace": "kube-system"}, "storageClassName": "cairn-local",
            "capacity": "10Gi", "nodeTopology": {"matchLabels": {"topology.cairn.dev/node": "node-1"}}}),
        )];
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &[],
            classes: &classes,
            drivers: &drivers,
            capacities: &caps,
        };
        assert!(check_node(std::slice::from_ref(&c), &node("node-1"), &ctx).is_ok());
        assert!(check_node(&[c], &node("node-2"), &ctx).is_err());
    }

    #[test]
    fn immediate_unbound_claims_block_scheduling() {
        let mut pvcs = BTreeMap::new();
        pvcs.insert(("d".to_string(), "data".to_string()), claim("fast", None));
        let classes = classes();
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &[],
            classes: &classes,
            drivers: &[],
            capacities: &[],
        };
        let pod: Pod = from(
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}]}}),
        );
        assert_eq!(
            pod_claims(&pod, &ctx).unwrap_err(),
            "pod has unbound immediate PersistentVolumeClaims"
        );
    }
}
