//! Capacity scenario: one object per (registered node segment × Cairn class), labelled like
//! external-provisioner, owned by the class; stale objects deleted.

use serde_json::json;

use super::fixtures::*;
use crate::controllers::capacity;
use crate::testkit::Fixture;

#[tokio::test]
async fn publishes_one_object_per_segment_and_class_and_removes_stale() {
    let mut f = Fixture::new().await;
    let r = f
        .run(
            |mut api| async move {
                let mut other = class("nfs", "Immediate", json!({}));
                other["provisioner"] = json!("nfs.example.com");
                api.expect("GET", "/apis/storage.k8s.io/v1/storageclasses", 200, json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClassList", "metadata": {},
                    "items": [class("cairn-local", "WaitForFirstConsumer", json!({ "type": "local" })), other]
                })).await;
                let mut unregistered = node("node-9");
                unregistered["metadata"]["labels"] = json!({ "kubernetes.io/hostname": "node-9" });
                api.expect("GET", "/api/v1/nodes", 200, json!({
                    "apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [node("node-1"), unregistered]
                })).await;
                let list = api.expect("GET", "/apis/storage.k8s.io/v1/namespaces/cairn-system/csistoragecapacities", 200, json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacityList", "metadata": {},
                    "items": [{
                        "apiVersion": "storage.k8s.io/v1", "kind": "CSIStorageCapacity",
                        "metadata": { "name": "csisc-old", "namespace": "cairn-system" },
                        "storageClassName": "deleted-class",
                        "nodeTopology": { "matchLabels": { "topology.cairn.dev/node": "node-1" } },
                        "capacity": "1Gi"
                    }]
                })).await;
                assert!(list.query.contains("labelSelector=csi.storage.k8s.io%2Fdrivername%3Dcsi.cairn.dev%2Ccsi.storage.k8s.io%2Fmanaged-by%3Dexternal-provisioner"), "{}", list.query);
                let created = api.expect("POST", "/apis/storage.k8s.io/v1/namespaces/cairn-system/csistoragecapacities", 201, json!(null)).await.body;
                assert_eq!(created["metadata"]["generateName"], "csisc-");
                assert_eq!(created["metadata"]["labels"]["csi.storage.k8s.io/drivername"], "csi.cairn.dev");
                assert_eq!(created["metadata"]["labels"]["csi.storage.k8s.io/managed-by"], "external-provisioner");
                assert_eq!(created["metadata"]["ownerReferences"][0]["kind"], "StorageClass");
                assert_eq!(created["metadata"]["ownerReferences"][0]["name"], "cairn-local");
                assert_eq!(created["storageClassName"], "cairn-local");
                assert_eq!(created["nodeTopology"]["matchLabels"], json!({
                    "topology.cairn.dev/node": "node-1", "topology.kubernetes.io/zone": "zone-a"
                }));
                assert_eq!(created["capacity"], "10Gi");
                assert_eq!(created["maximumVolumeSize"], "10Gi");
                api.expect("DELETE", "/apis/storage.k8s.io/v1/namespaces/cairn-system/csistoragecapacities/csisc-old", 200, json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200
                })).await;
                api
            },
            |ctx| async move { capacity::publish_once(&ctx, "cairn-system").await },
        )
        .await;
    assert!(r.is_ok(), "{r:?}");
    let s = f.csi.state();
    assert_eq!(
        s.capacities.len(),
        1,
        "only the registered node, only the Cairn class"
    );
    assert_eq!(s.capacities[0].parameters["type"], "local");
    assert_eq!(
        s.capacities[0]
            .accessible_topology
            .as_ref()
            .unwrap()
            .segments["topology.cairn.dev/node"],
        "node-1"
    );
}
