//! The resizer: a bound claim whose request exceeds its PV on an expandable class →
//! ControllerExpandVolume → PV capacity, then FileSystemResizePending or the new capacity.

use std::sync::Arc;

use cairn_proto::csi::v1::{
    self as csi, CapacityRange, controller_service_capability::rpc::Type as Cap,
};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::claim::{class_name, requested_bytes};
use crate::context::{Ctx, key};
use crate::error::{Error, Result};
use crate::names::*;
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

/// A bound claim of ours that asks for more than its PV holds, on a class that allows it.
struct Expansion {
    ns: String,
    name: String,
    reference: ObjectReference,
    claims: Api<PersistentVolumeClaim>,
    volume_name: String,
    pv_spec: PersistentVolumeSpec,
    source: CSIPersistentVolumeSource,
    requested: u64,
}

/// The steps: what the claim asks for, Resizing on the claim, ControllerExpandVolume, then
/// the new size on the PV and the claim.
async fn resize(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action> {
    if let Some(x) = Expansion::of(pvc, ctx).await? {
        x.start(ctx).await?;
        let resp = x.expand(ctx).await?;
        x.finish(ctx, &resp).await?;
        ctx.capacity_trigger.notify_one();
    }
    Ok(Action::await_change())
}

/// The bound PV's name, unless the claim is unbound or names another resizer.
fn bound_volume(pvc: &PersistentVolumeClaim) -> Option<String> {
    let volume_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())?;
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        return None;
    }
    let ours = pvc
        .annotations()
        .get(ANN_STORAGE_RESIZER)
        .is_none_or(|r| r == DRIVER);
    ours.then_some(volume_name)
}

/// Writes `status` to the claim's status subresource (a merge patch).
async fn patch_status(
    claims: &Api<PersistentVolumeClaim>,
    name: &str,
    status: Value,
) -> Result<()> {
    let patch = json!({ "status": status });
    claims
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

impl Expansion {
    /// The expansion `pvc` asks for, or `None` when there is nothing for us to do.
    async fn of(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Option<Expansion>> {
        let Some(volume_name) = bound_volume(pvc) else {
            return Ok(None);
        };
        let Some(pv) = Api::<PersistentVolume>::all(ctx.client.clone())
            .get_opt(&volume_name)
            .await?
        else {
            return Ok(None);
        };
        let pv_spec = pv.spec.unwrap_or_default();
        let Some(source) = pv_spec.csi.clone().filter(|c| c.driver == DRIVER) else {
            return Ok(None);
        };
        let requested = requested_bytes(pvc)?;
        let pv_bytes = match pv_spec.capacity.as_ref().and_then(|c| c.get("storage")) {
            Some(q) => quantity::to_bytes(q)?,
            None => 0,
        };
        if requested <= pv_bytes {
            return Ok(None);
        }
        let Some(cn) = class_name(pvc) else {
            return Ok(None);
        };
        let class = Api::<StorageClass>::all(ctx.client.clone())
            .get_opt(&cn)
            .await?;
        if class
            .as_ref()
            .is_none_or(|c| c.allow_volume_expansion != Some(true))
        {
            return Ok(None);
        }
        let ns = pvc.namespace().unwrap_or_default();
        Ok(Some(Expansion {
            claims: Api::namespaced(ctx.client.clone(), &ns),
            ns,
            name: pvc.name_any(),
            reference: pvc.object_ref(&()),
            volume_name,
            pv_spec,
            source,
            requested,
        }))
    }

    /// `ns/name`, for logs.
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// Marks the claim Resizing (condition, allocatedResources, controller in progress).
    async fn start(&self, ctx: &Ctx) -> Result<()> {
        let status = json!({
            "conditions": [condition(COND_RESIZING, "")],
            "allocatedResources": { "storage": quantity::from_bytes(self.requested) },
            "allocatedResourceStatuses": { "storage": RESIZE_CONTROLLER_IN_PROGRESS },
        });
        patch_status(&self.claims, &self.name, status).await?;
        let msg = format!("External resizer is resizing volume {}", self.volume_name);
        ctx.normal(&self.reference, "Resizing", msg).await;
        info!(pvc = %self.key(), pv = %self.volume_name, volume_id = %self.source.volume_handle, requested = self.requested, "expanding");
        Ok(())
    }

    /// ControllerExpandVolume. A refused size (INVALID_ARGUMENT, OUT_OF_RANGE) marks the
    /// claim ControllerResizeInfeasible; every failure is a Warning and a retry.
    async fn expand(&self, ctx: &Ctx) -> Result<csi::ControllerExpandVolumeResponse> {
        let req = self.request(ctx).await?;
        let e = match ctx.csi.expand(req).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let msg = format!("resize volume {:?} failed: {e}", self.volume_name);
        ctx.warn(&self.reference, "VolumeResizeFailed", msg).await;
        let infeasible = matches!(
            e.csi_code(),
            Some(tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
        );
        if infeasible {
            let status = json!({
                "conditions": [],
                "allocatedResourceStatuses": { "storage": "ControllerResizeInfeasible" },
            });
            patch_status(&self.claims, &self.name, status).await?;
        }
        Err(e)
    }

    /// The ControllerExpandVolume request, with the PV's first access mode as capability.
    async fn request(&self, ctx: &Ctx) -> Result<csi::ControllerExpandVolumeRequest> {
        let snmw = ctx.csi.has_capability(Cap::SingleNodeMultiWriter).await?;
        let spec = &self.pv_spec;
        let modes = spec.access_modes.clone().unwrap_or_default();
        let cap = csic::capabilities(
            &modes[..modes.len().min(1)],
            spec.volume_mode.as_deref() == Some("Block"),
            self.source.fs_type.as_deref().unwrap_or_default(),
            spec.mount_options.as_deref().unwrap_or_default(),
            snmw,
        )?
        .into_iter()
        .next();
        Ok(csi::ControllerExpandVolumeRequest {
            volume_id: self.source.volume_handle.clone(),
            capacity_range: Some(CapacityRange {
                required_bytes: i64::try_from(self.requested)
                    .map_err(|_| Error::Invalid("size too large".into()))?,
                limit_bytes: 0,
            }),
            volume_capability: cap,
            ..Default::default()
        })
    }

    /// The new size on the PV, then on the claim: FileSystemResizePending when the node
    /// must grow the filesystem, else the new capacity.
    async fn finish(&self, ctx: &Ctx, resp: &csi::ControllerExpandVolumeResponse) -> Result<()> {
        let new_bytes = u64::try_from(resp.capacity_bytes)
            .unwrap_or(0)
            .max(self.requested);
        let size = quantity::from_bytes(new_bytes);
        Api::<PersistentVolume>::all(ctx.client.clone())
            .patch(
                &self.volume_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": { "capacity": { "storage": size } } })),
            )
            .await?;
        let (status, reason, msg) = if resp.node_expansion_required {
            let status = json!({
                "conditions": [condition(
                    COND_FS_RESIZE_PENDING,
                    "Waiting for user to (re-)start a pod to finish file system resize of volume on node.",
                )],
                "allocatedResourceStatuses": { "storage": RESIZE_NODE_PENDING },
            });
            let msg = "Require file system resize of volume on node";
            (status, "FileSystemResizeRequired", msg)
        } else {
            let status = json!({
                "capacity": { "storage": size },
                "conditions": [],
                "allocatedResourceStatuses": null,
            });
            (status, "VolumeResizeSuccessful", "Resize volume succeeded")
        };
        patch_status(&self.claims, &self.name, status).await?;
        ctx.normal(&self.reference, reason, msg.into()).await;
        info!(pvc = %self.key(), pv = %self.volume_name, new_bytes, node_expansion = resp.node_expansion_required, "expanded");
        Ok(())
    }
}
