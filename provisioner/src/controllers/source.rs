//! Claim content sources: a `dataSource` of another claim (a clone) or of a VolumeSnapshot
//! becomes the CSI `volume_content_source`, checked as external-provisioner checks it.

use cairn_proto::csi::v1 as csi;
use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::cloning;
use crate::claim::{self, DataSource};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::names::DRIVER;
use crate::quantity;

const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// The CSI content source for `pvc`, or `None` when it names none.
pub async fn content_source(
    pvc: &PersistentVolumeClaim,
    ctx: &Ctx,
) -> Result<Option<csi::VolumeContentSource>> {
    let Some(DataSource {
        group,
        kind,
        name,
        namespace,
    }) = claim::data_source(pvc)
    else {
        return Ok(None);
    };
    let ns = pvc.namespace().unwrap_or_default();
    if namespace.as_ref().is_some_and(|n| *n != ns) {
        return Err(Error::Invalid(format!(
            "dataSourceRef in namespace {namespace:?}: cross-namespace sources are not supported"
        )));
    }
    let t = match (group.as_str(), kind.as_str()) {
        ("", "PersistentVolumeClaim") => Type::Volume(VolumeSource {
            volume_id: clone_source(pvc, ctx, &ns, &name).await?,
        }),
        (SNAPSHOT_GROUP, "VolumeSnapshot") => Type::Snapshot(SnapshotSource {
            snapshot_id: snapshot_source(ctx, &ns, &name).await?,
        }),
        _ => {
            return Err(Error::Invalid(format!(
                "dataSource {kind}.{group} is not a claim or a VolumeSnapshot; left to its populator"
            )));
        }
    };
    Ok(Some(csi::VolumeContentSource { r#type: Some(t) }))
}

/// The volume handle of claim `ns/name` for `pvc` to clone, once the source is bound and
/// passes the checks; the source is then protected until the clone has its volume.
async fn clone_source(
    pvc: &PersistentVolumeClaim,
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<String> {
    let claims = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let src = claims
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Waiting(format!("source claim {ns}/{name} not found")))?;
    let pv_name = src
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Waiting(format!("source claim {ns}/{name} is not bound")))?;
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(&pv_name)
        .await?
        .ok_or_else(|| Error::Waiting(format!("source volume {pv_name} not found")))?;
    let handle = clone_handle(pvc, &src, &pv)?;
    // Only a source that passed the checks is protected: a mismatch changes nothing.
    cloning::protect(ctx, &src).await?;
    Ok(handle)
}

/// The CSI snapshot id behind VolumeSnapshot `ns/name`, once it is ready and bound.
async fn snapshot_source(ctx: &Ctx, ns: &str, name: &str) -> Result<String> {
    let ar = |kind: &str| ApiResource::from_gvk(&GroupVersionKind::gvk(SNAPSHOT_GROUP, "v1", kind));
    let snap = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &ar("VolumeSnapshot"))
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::Waiting(format!("VolumeSnapshot {ns}/{name} not found")))?;
    let content_name = bound_content(&snap.data, ns, name)?;
    let content = Api::<DynamicObject>::all_with(ctx.client.clone(), &ar("VolumeSnapshotContent"))
        .get_opt(&content_name)
        .await?
        .ok_or_else(|| Error::Waiting(format!("VolumeSnapshotContent {content_name} not found")))?;
    snapshot_handle(&content.data, &content_name)
}

/// The source volume's handle, if `src` may be cloned into `pvc`: same class and volume
/// mode, a Cairn volume, and no larger than what `pvc` asks for.
fn clone_handle(
    pvc: &PersistentVolumeClaim,
    src: &PersistentVolumeClaim,
    pv: &PersistentVolume,
) -> Result<String> {
    let src_name = src.name_any();
    if claim::class_name(src) != claim::class_name(pvc) {
        return Err(Error::Invalid(format!(
            "source claim {src_name} has StorageClass {:?}, not {:?}",
            claim::class_name(src),
            claim::class_name(pvc)
        )));
    }
    let mode = |c: &PersistentVolumeClaim| {
        c.spec
            .as_ref()
            .and_then(|s| s.volume_mode.clone())
            .unwrap_or_else(|| "Filesystem".into())
    };
    if mode(src) != mode(pvc) {
        return Err(Error::Invalid(format!(
            "source claim {src_name} has volumeMode {}, not {}",
            mode(src),
            mode(pvc)
        )));
    }
    let csi = pv
        .spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .filter(|c| c.driver == DRIVER)
        .ok_or_else(|| {
            Error::Invalid(format!("source claim {src_name} is not a {DRIVER} volume"))
        })?;
    let src_bytes = src
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .map(quantity::to_bytes)
        .transpose()?
        .unwrap_or(0);
    let want = claim::requested_bytes(pvc)?;
    if want < src_bytes {
        return Err(Error::Invalid(format!(
            "requested {want} bytes is less than the source claim {src_name}'s {src_bytes}"
        )));
    }
    Ok(csi.volume_handle.clone())
}

/// The content a ready VolumeSnapshot is bound to.
fn bound_content(snap: &Value, ns: &str, name: &str) -> Result<String> {
    let status = &snap["status"];
    if status["readyToUse"] != Value::Bool(true) {
        return Err(Error::Waiting(format!(
            "VolumeSnapshot {ns}/{name} is not ready to use"
        )));
    }
    status["boundVolumeSnapshotContentName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::Waiting(format!("VolumeSnapshot {ns}/{name} is not bound")))
}

/// The CSI snapshot id of a VolumeSnapshotContent made by this driver.
fn snapshot_handle(content: &Value, name: &str) -> Result<String> {
    if content["spec"]["driver"].as_str() != Some(DRIVER) {
        return Err(Error::Invalid(format!(
            "VolumeSnapshotContent {name} belongs to driver {}, not {DRIVER}",
            content["spec"]["driver"]
        )));
    }
    content["status"]["snapshotHandle"]
        .as_str()
        .or_else(|| content["spec"]["source"]["snapshotHandle"].as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Waiting(format!(
                "VolumeSnapshotContent {name} has no snapshotHandle yet"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(
        class: &str,
        mode: &str,
        request: &str,
        capacity: Option<&str>,
    ) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"storageClassName": class, "volumeMode": mode,
                     "resources": {"requests": {"storage": request}}},
            "status": capacity.map(|c| json!({"capacity": {"storage": c}})).unwrap_or(json!({}))
        }))
        .unwrap()
    }

    fn pv(driver: &str) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": "pv"},
            "spec": {"csi": {"driver": driver, "volumeHandle": "pvc-123"}}
        }))
        .unwrap()
    }

    #[test]
    fn a_clone_needs_the_same_class_and_mode_and_room() {
        let src = claim("cairn", "Filesystem", "1Gi", Some("1Gi"));
        let ok = claim("cairn", "Filesystem", "2Gi", None);
        assert_eq!(clone_handle(&ok, &src, &pv(DRIVER)).unwrap(), "pvc-123");
        for (bad, why) in [
            (claim("other", "Filesystem", "2Gi", None), "class"),
            (claim("cairn", "Block", "2Gi", None), "mode"),
            (claim("cairn", "Filesystem", "512Mi", None), "size"),
        ] {
            assert!(
                matches!(
                    clone_handle(&bad, &src, &pv(DRIVER)),
                    Err(Error::Invalid(_))
                ),
                "{why}"
            );
        }
        assert!(matches!(
            clone_handle(&ok, &src, &pv("other.csi")),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn a_snapshot_is_used_once_ready_and_bound_to_our_content() {
        let pending = json!({"status": {"readyToUse": false}});
        assert!(matches!(
            bound_content(&pending, "ns", "s"),
            Err(Error::Waiting(_))
        ));
        let ready = json!({"status": {"readyToUse": true, "boundVolumeSnapshotContentName": "snapcontent-1"}});
        assert_eq!(bound_content(&ready, "ns", "s").unwrap(), "snapcontent-1");
        let content =
            json!({"spec": {"driver": DRIVER}, "status": {"snapshotHandle": "snapshot-abc"}});
        assert_eq!(snapshot_handle(&content, "c").unwrap(), "snapshot-abc");
        let foreign = json!({"spec": {"driver": "x"}, "status": {"snapshotHandle": "h"}});
        assert!(matches!(
            snapshot_handle(&foreign, "c"),
            Err(Error::Invalid(_))
        ));
        let unmade = json!({"spec": {"driver": DRIVER}, "status": {}});
        assert!(matches!(
            snapshot_handle(&unmade, "c"),
            Err(Error::Waiting(_))
        ));
    }
}
