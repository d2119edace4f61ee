//! Objects used by the scenarios, written as the API server would return them.
//! Built from JSON so they read like `kubectl get -o json` output.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use serde_json::{Value, json};

pub const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
pub const PV: &str = "pvc-1b4e28ba-2fa1-11d2-883f-0016d3cca427";

pub fn class(name: &str, binding: &str, params: Value) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": { "name": name, "uid": format!("uid-{name}") },
        "provisioner": "csi.cairn.dev",
        "parameters": params,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": true,
        "mountOptions": ["noatime"]
    })
}

pub fn pvc(class: &str, annotations: Value) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": "data", "namespace": "apps", "uid": UID, "resourceVersion": "7", "annotations": annotations },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": class,
            "volumeMode": "Filesystem",
            "resources": { "requests": { "storage": "1Gi" } }
        },
        "status": { "phase": "Pending" }
    }))
    .expect("pvc")
}

pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.cairn.dev/node": name,
            "topology.kubernetes.io/zone": "zone-a"
        } }
    })
}

pub fn pv(phase: &str, reclaim: &str, deleting: bool) -> PersistentVolume {
    let mut v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": PV, "resourceVersion": "42",
            "annotations": { "pv.kubernetes.io/provisioned-by": "csi.cairn.dev" },
            "finalizers": ["kubernetes.io/pv-protection", "external-provisioner.volume.kubernetes.io/finalizer"]
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": { "storage": "1Gi" },
            "csi": { "driver": "csi.cairn.dev", "volumeHandle": PV, "fsType": "ext4",
                     "volumeAttributes": { "type": "replicated" } },
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": "cairn-replicated",
            "volumeMode": "Filesystem",
            "claimRef": { "namespace": "apps", "name": "data", "uid": UID }
        },
        "status": { "phase": phase }
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    serde_json::from_value(v).expect("pv")
}

pub fn va(attached: bool, deleting: bool) -> VolumeAttachment {
    let mut v = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": { "name": "csi-abc", "resourceVersion": "3" },
        "spec": { "attacher": "csi.cairn.dev", "nodeName": "node-1",
                  "source": { "persistentVolumeName": PV } },
        "status": { "attached": attached }
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        v["metadata"]["finalizers"] = json!(["external-attacher/csi-cairn-dev"]);
    }
    serde_json::from_value(v).expect("va")
}
