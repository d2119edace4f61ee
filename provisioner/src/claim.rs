//! What a claim asks for, read from its object alone: its StorageClass, its storage request
//! and its data source. Shared by the provisioner, the resizer, content sources and cloning.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, TypedLocalObjectReference};
use kube::ResourceExt;

use crate::error::{Error, Result};
use crate::names::ANN_BETA_STORAGE_CLASS;
use crate::quantity;

/// The object a claim names as its content source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// API group; empty for the core group (a claim).
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Set only by a `dataSourceRef` that names one.
    pub namespace: Option<String>,
}

/// The claim's class name (spec, or the deprecated beta annotation).
pub fn class_name(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| pvc.annotations().get(ANN_BETA_STORAGE_CLASS).cloned())
        .filter(|c| !c.is_empty())
}

/// The claim's requested storage in bytes.
pub fn requested_bytes(pvc: &PersistentVolumeClaim) -> Result<u64> {
    let q = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .ok_or_else(|| Error::Invalid("claim has no storage request".into()))?;
    let b = quantity::to_bytes(q)?;
    if b == 0 {
        return Err(Error::Invalid("claim requests 0 bytes".into()));
    }
    Ok(b)
}

/// What the claim names as its source (`dataSourceRef` wins over `dataSource`).
pub fn data_source(pvc: &PersistentVolumeClaim) -> Option<DataSource> {
    let spec = pvc.spec.as_ref()?;
    if let Some(r) = &spec.data_source_ref {
        return Some(DataSource {
            group: r.api_group.clone().unwrap_or_default(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            namespace: r.namespace.clone(),
        });
    }
    spec.data_source.as_ref().map(
        |TypedLocalObjectReference {
             api_group,
             kind,
             name,
         }| DataSource {
            group: api_group.clone().unwrap_or_default(),
            kind: kind.clone(),
            name: name.clone(),
            namespace: None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(v: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_spec_class_wins_over_the_beta_annotation_and_empty_is_none() {
        let ann = json!({"volume.beta.kubernetes.io/storage-class": "old"});
        let both =
            claim(json!({"metadata": {"annotations": ann}, "spec": {"storageClassName": "new"}}));
        assert_eq!(class_name(&both).as_deref(), Some("new"));
        let beta = claim(json!({"metadata": {"annotations": ann}, "spec": {}}));
        assert_eq!(class_name(&beta).as_deref(), Some("old"));
        let empty = claim(json!({"metadata": {}, "spec": {"storageClassName": ""}}));
        assert_eq!(class_name(&empty), None);
    }

    #[test]
    fn a_claim_must_request_some_storage() {
        let req = |q: &str| {
            claim(json!({"metadata": {}, "spec": {"resources": {"requests": {"storage": q}}}}))
        };
        assert_eq!(requested_bytes(&req("1Mi")).unwrap(), 1 << 20);
        assert!(matches!(requested_bytes(&req("0")), Err(Error::Invalid(_))));
        let none = claim(json!({"metadata": {}, "spec": {}}));
        assert!(matches!(requested_bytes(&none), Err(Error::Invalid(_))));
    }

    #[test]
    fn data_source_ref_wins_over_data_source() {
        let both = claim(json!({"metadata": {}, "spec": {
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "a"},
            "dataSourceRef": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                              "name": "s", "namespace": "ns"},
        }}));
        let src = data_source(&both).unwrap();
        assert_eq!(
            (src.group.as_str(), src.kind.as_str(), src.name.as_str()),
            ("snapshot.storage.k8s.io", "VolumeSnapshot", "s")
        );
        assert_eq!(src.namespace.as_deref(), Some("ns"));
        let plain = claim(json!({"metadata": {}, "spec": {
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "a"}}}));
        let src = data_source(&plain).unwrap();
        assert_eq!((src.group.as_str(), src.name.as_str()), ("", "a"));
        assert_eq!(src.namespace, None);
        assert_eq!(
            data_source(&claim(json!({"metadata": {}, "spec": {}}))),
            None
        );
    }
}
