//! The scheduler's NodeVolumeLimits filter: a node's CSI volumes per driver stay within
//! its CSINode `allocatable.count`, counting the volumes the pod would add.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::CSINode;

use super::filters::{Reason, pods_on};
use super::volume_binding::VolumeCtx;
use crate::pvutil::claim_class;

/// Upstream's reason when a driver's limit would be exceeded.
pub const EXCEEDED: &str = "node(s) exceed max volume count";

/// (driver, volume) for each CSI volume of the pod: a bound claim's PV handle, or, for a
/// claim still to be provisioned, the claim itself under its class's provisioner.
fn csi_volumes(pod: &Pod, ctx: &VolumeCtx) -> BTreeSet<(String, String)> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeSet::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(src) = &v.persistent_volume_claim else {
            continue;
        };
        let Some(claim) = ctx.pvcs.get(&(ns.clone(), src.claim_name.clone())) else {
            continue;
        };
        let bound = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| !v.is_empty());
        match bound {
            Some(pv) => {
                let csi = ctx
                    .pvs
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(pv.as_str()))
                    .and_then(|p| p.spec.as_ref()?.csi.clone());
                if let Some(c) = csi {
                    out.insert((c.driver, c.volume_handle));
                }
            }
            None => {
                if let Some(class) = ctx.classes.get(&claim_class(claim)) {
                    out.insert((
                        class.provisioner.clone(),
                        format!("{ns}/{}", src.claim_name),
                    ));
                }
            }
        }
    }
    out
}

/// Fails when, for a driver the pod adds volumes of, the node's distinct volumes of that
/// driver would exceed the CSINode's `allocatable.count`.
pub fn check(
    pod: &Pod,
    node: &Node,
    pods: &[Pod],
    ctx: &VolumeCtx,
    csinodes: &[CSINode],
) -> Result<(), Reason> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let limits: BTreeMap<String, i32> = csinodes
        .iter()
        .filter(|c| c.metadata.name.as_deref() == Some(name))
        .flat_map(|c| c.spec.drivers.iter())
        .filter_map(|d| Some((d.name.clone(), d.allocatable.as_ref()?.count?)))
        .collect();
    let new = csi_volumes(pod, ctx);
    if limits.is_empty() || new.is_empty() {
        return Ok(());
    }
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in pods_on(name, pods) {
        for (d, h) in csi_volumes(p, ctx) {
            used.entry(d).or_default().insert(h);
        }
    }
    for (d, h) in &new {
        used.entry(d.clone()).or_default().insert(h.clone());
    }
    let over = new.iter().map(|(d, _)| d).any(|d| {
        limits
            .get(d)
            .is_some_and(|limit| used.get(d).map_or(0, BTreeSet::len) > *limit as usize)
    });
    if over { Err(EXCEEDED.into()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use serde_json::json;

    fn pv(name: &str, driver: &str) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"csi": {"driver": driver, "volumeHandle": name}}}))
        .unwrap()
    }

    fn claim(name: &str, pv: &str) -> ((String, String), PersistentVolumeClaim) {
        let c = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
            "spec": {"volumeName": pv}}))
        .unwrap();
        (("d".into(), name.into()), c)
    }

    fn pod(claim: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": claim, "namespace": "d"},
            "spec": {"nodeName": node, "containers": [],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}}))
        .unwrap()
    }

    #[test]
    fn a_driver_limit_counts_distinct_volumes_on_the_node() {
        let pvs = vec![pv("v1", "a"), pv("v2", "a"), pv("v3", "b")];
        let pvcs = BTreeMap::from([
            claim("c1", "v1"),
            claim("c2", "v2"),
            claim("c3", "v3"),
            claim("c1b", "v1"),
        ]);
        let classes = BTreeMap::new();
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &pvs,
            classes: &classes,
            drivers: &[],
            capacities: &[],
        };
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        let csinode: CSINode = serde_json::from_value(json!({"metadata": {"name": "n"},
            "spec": {"drivers": [{"name": "a", "nodeID": "n", "allocatable": {"count": 1}}]}}))
        .unwrap();
        let running = vec![pod("c1", Some("n"))];
        let limits = [csinode];
        assert_eq!(
            check(&pod("c2", None), &node, &running, &ctx, &limits),
            Err(EXCEEDED.into())
        );
        // The same volume again, or another driver's, fits.
        assert_eq!(
            check(&pod("c1b", None), &node, &running, &ctx, &limits),
            Ok(())
        );
        assert_eq!(
            check(&pod("c3", None), &node, &running, &ctx, &limits),
            Ok(())
        );
        // No CSINode limit: anything fits.
        assert_eq!(check(&pod("c2", None), &node, &running, &ctx, &[]), Ok(()));
    }
}
