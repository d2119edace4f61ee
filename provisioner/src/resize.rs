//! The resizer: a bound claim whose request exceeds its PV on an expandable class →
//! ControllerExpandVolume → PV capacity, then FileSystemResizePending or the new capacity.

use std::sync::Arc;

use cairn_proto::csi::v1::{
    self as csi, CapacityRange, controller_service_capability::rpc::Type as Cap,
};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::context::{Ctx, key};
use crate::error::{Error, Result};
use crate::names::*;
use crate::provision::{class_name, requested_bytes};
use crate::{csi as csic, quantity};

const CONTROLLER: &str = "resizer";

/// Reconciles one claim.
pub async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = key("resize", pvc.namespace().as_deref(), &pvc.name_any());
    let res = resize(&pvc, &ctx).await;
    ctx.finished(CONTROLLER, &k, &res);
    res
}

/// Backoff after a failed reconcile.
pub fn error_policy(pvc: Arc<PersistentVolumeClaim>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let ns = pvc.namespace().unwrap_or_default();
    warn!(pvc = %format!("{ns}/{}", pvc.name_any()), error = %err, "resize failed; will retry");
    ctx.retry(&key("resize", Some(&ns), &pvc.name_any()))
}

fn condition(type_: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": "True",
        "lastProbeTime": null,
        "lastTransitionTime": Time(k8s_openapi::chrono::Utc::now()),
        "message": message,
    })
}

async fn resize(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action> {
    let idle = Action::await_change();
    let Some(volume_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
    else {
        return Ok(idle);
    };
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return Ok(idle);
    }
    if pvc
        .annotations()
        .get(ANN_STORAGE_RESIZER)
        .is_some_and(|r| r != DRIVER)
    {
        return Ok(idle);
    }
    let Some(pv) = Api::<PersistentVolume>::all(ctx.client.clone())
        .get_opt(&volume_name)
        .await?
    else {
        return Ok(idle);
    };
    let pv_spec = pv.spec.clone().unwrap_or_default();
    let Some(source) = pv_spec.csi.clone().filter(|c| c.driver == DRIVER) else {
        return Ok(idle);
    };
    let requested = requested_bytes(pvc)?;
    let pv_bytes = match pv_spec.capacity.as_ref().and_then(|c| c.get("storage")) {
        Some(q) => quantity::to_bytes(q)?,
        None => 0,
    };
    if requested <= pv_bytes {
        return Ok(idle);
    }
    let Some(cn) = class_name(pvc) else {
        return Ok(idle);
    };
    let class = Api::<StorageClass>::all(ctx.client.clone())
        .get_opt(&cn)
        .await?;
    if class
        .as_ref()
        .is_none_or(|c| c.allow_volume_expansion != Some(true))
    {
        return Ok(idle);
    }
    let (ns, name) = (pvc.namespace().unwrap_or_default(), pvc.name_any());
    let reference = pvc.object_ref(&());
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns);
    let status_patch = |status: Value| json!({ "status": status });
    pvcs.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&status_patch(json!({
            "conditions": [condition(COND_RESIZING, "")],
            "allocatedResources": { "storage": quantity::from_bytes(requested) },
            "allocatedResourceStatuses": { "storage": RESIZE_CONTROLLER_IN_PROGRESS },
        }))),
    )
    .await?;
    ctx.normal(
        &reference,
        "Resizing",
        format!("External resizer is resizing volume {volume_name}"),
    )
    .await;
    info!(pvc = %format!("{ns}/{name}"), pv = %volume_name, volume_id = %source.volume_handle, requested, "expanding");

    let snmw = ctx.csi.has_capability(Cap::SingleNodeMultiWriter).await?;
    let modes = pv_spec.access_modes.clone().unwrap_or_default();
    let cap = csic::capabilities(
        &modes[..modes.len().min(1)],
        pv_spec.volume_mode.as_deref() == Some("Block"),
        source.fs_type.as_deref().unwrap_or_default(),
        pv_spec.mount_options.as_deref().unwrap_or_default(),
        snmw,
    )?
    .into_iter()
    .next();
    let req = csi::ControllerExpandVolumeRequest {
        volume_id: source.volume_handle.clone(),
        capacity_range: Some(CapacityRange {
            required_bytes: i64::try_from(requested)
                .map_err(|_| Error::Invalid("size too large".into()))?,
            limit_bytes: 0,
        }),
        volume_capability: cap,
        ..Default::default()
    };
    let resp = match ctx.csi.expand(req).await {
        Ok(r) => r,
        Err(e) => {
            ctx.warn(
                &reference,
                "VolumeResizeFailed",
                format!("resize volume {volume_name:?} failed: {e}"),
            )
            .await;
            let infeasible = matches!(
                e.csi_code(),
                Some(tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
            );
            if infeasible {
                pvcs.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&status_patch(json!({
                        "conditions": [],
                        "allocatedResourceStatuses": { "storage": "ControllerResizeInfeasible" },
                    }))),
                )
                .await?;
            }
            return Err(e);
        }
    };
    let new_bytes = u64::try_from(resp.capacity_bytes)
        .unwrap_or(0)
        .max(requested);
    Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(
            &volume_name,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({ "spec": { "capacity": { "storage": quantity::from_bytes(new_bytes) } } }),
            ),
        )
        .await?;
    if resp.node_expansion_required {
        pvcs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(json!({
                "conditions": [condition(
                    COND_FS_RESIZE_PENDING,
                    "Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
                )],
                "allocatedResourceStatuses": { "storage": RESIZE_NODE_PENDING },
            }))),
        )
        .await?;
        ctx.normal(
            &reference,
            "FileSystemResizeRequired",
            "Require file system resize of volume on node".into(),
        )
        .await;
    } else {
        pvcs.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&status_patch(json!({
                "capacity": { "storage": quantity::from_bytes(new_bytes) },
                "conditions": [],
                "allocatedResourceStatuses": null,
            }))),
        )
        .await?;
        ctx.normal(
            &reference,
            "VolumeResizeSuccessful",
            "Resize volume succeeded".into(),
        )
        .await;
    }
    info!(pvc = %format!("{ns}/{name}"), pv = %volume_name, new_bytes, node_expansion = resp.node_expansion_required, "expanded");
    ctx.capacity_trigger.notify_one();
    Ok(idle)
}
