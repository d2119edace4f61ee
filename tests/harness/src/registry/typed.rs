//! Decoding through the `k8s-openapi` types: a body must deserialize as its
//! kind, unknown fields are pruned (or rejected under strict field validation).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1::Event as EventV1;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::api::storage::v1 as storage;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::resources::ResourceType;

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value> {
    let typed: T = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Error::BadRequest(format!(
            "json: cannot decode field \"{path}\": {}",
            e.into_inner()
        ))
    })?;
    serde_json::to_value(typed).map_err(Error::internal)
}

/// Decodes `v` as the kind of `rt` and re-encodes it. With `strict`, a field the
/// kind does not have is a BadRequest naming it, as `fieldValidation=Strict` does.
pub fn normalize(rt: &ResourceType, v: &Value, strict: bool) -> Result<Value> {
    let out = match (rt.group, rt.kind) {
        ("", "Namespace") => roundtrip::<core::Namespace>(v),
        ("", "Node") => roundtrip::<core::Node>(v),
        ("", "Pod") => roundtrip::<core::Pod>(v),
        ("", "PersistentVolumeClaim") => roundtrip::<core::PersistentVolumeClaim>(v),
        ("", "PersistentVolume") => roundtrip::<core::PersistentVolume>(v),
        ("", "Event") => roundtrip::<core::Event>(v),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(v),
        ("", "Secret") => roundtrip::<core::Secret>(v),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(v),
        ("", "Service") => roundtrip::<core::Service>(v),
        (_, "StorageClass") => roundtrip::<storage::StorageClass>(v),
        (_, "CSIDriver") => roundtrip::<storage::CSIDriver>(v),
        (_, "CSINode") => roundtrip::<storage::CSINode>(v),
        (_, "CSIStorageCapacity") => roundtrip::<storage::CSIStorageCapacity>(v),
        (_, "VolumeAttachment") => roundtrip::<storage::VolumeAttachment>(v),
        ("apps", "StatefulSet") => roundtrip::<StatefulSet>(v),
        ("apps", "DaemonSet") => roundtrip::<DaemonSet>(v),
        ("apps", "Deployment") => roundtrip::<Deployment>(v),
        ("apps", "ReplicaSet") => roundtrip::<ReplicaSet>(v),
        ("batch", "Job") => roundtrip::<Job>(v),
        (_, "ClusterRole") => roundtrip::<rbac::ClusterRole>(v),
        (_, "ClusterRoleBinding") => roundtrip::<rbac::ClusterRoleBinding>(v),
        (_, "Role") => roundtrip::<rbac::Role>(v),
        (_, "RoleBinding") => roundtrip::<rbac::RoleBinding>(v),
        ("events.k8s.io", "Event") => roundtrip::<EventV1>(v),
        ("coordination.k8s.io", "Lease") => roundtrip::<Lease>(v),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            roundtrip::<CustomResourceDefinition>(v)
        }
        _ => Ok(v.clone()),
    }?;
    check_unknown(v, &out, "", strict)?;
    Ok(out)
}

/// A custom object's metadata, decoded as ObjectMeta (unknown fields as in `normalize`).
pub fn object_meta(v: &Value, strict: bool) -> Result<Value> {
    let v = if v.is_null() {
        &Value::Object(Default::default())
    } else {
        v
    };
    let out = roundtrip::<ObjectMeta>(v)?;
    check_unknown(v, &out, "metadata", strict)?;
    Ok(out)
}

fn check_unknown(v: &Value, out: &Value, prefix: &str, strict: bool) -> Result<()> {
    if strict {
        let mut unknown = Vec::new();
        find_unknown(v, out, prefix.to_string(), &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(Error::BadRequest(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}

/// Fields present (non-null) in `input` that the typed round trip dropped.
fn find_unknown(input: &Value, output: &Value, path: String, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            // Free-form maps (labels, annotations, data, parameters...) round-trip whole.
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => find_unknown(v, ov, p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                find_unknown(iv, ov, format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    #[test]
    fn strict_validation_names_unknown_fields() {
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "a"},
            "spec": {"accessModes": ["ReadWriteOnce"], "bogus": 1}});
        let err = normalize(&resources::PVCS, &pvc, true).unwrap_err();
        assert!(err.to_string().contains("spec.bogus"), "{err}");
        let pruned = normalize(&resources::PVCS, &pvc, false).unwrap();
        assert!(pruned["spec"].get("bogus").is_none());
    }

    #[test]
    fn type_errors_name_the_field() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "a"},
            "spec": {"replicas": "two", "selector": {}, "template": {}}});
        let err = normalize(&resources::STATEFULSETS, &sts, false).unwrap_err();
        assert!(err.to_string().contains("spec.replicas"), "{err}");
    }
}
