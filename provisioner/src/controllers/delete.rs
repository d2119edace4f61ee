//! The deleter: a Released (or deleted, unbound) PV that we provisioned with reclaim
//! Delete → DeleteVolume → finalizer removed → PV deleted. Retain only drops our finalizer.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::context::{Ctx, key};
use crate::error::{Error, Result, is_api_code};
use crate::names::{ANN_PROVISIONED_BY, DRIVER, PV_FINALIZER};

const CONTROLLER: &str = "deleter";

/// Reconciles one PV.
pub async fn reconcile(pv: Arc<PersistentVolume>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = key("pv", None, &pv.name_any());
    let res = delete(&pv, &ctx).await;
    ctx.finished(CONTROLLER, &k, &res);
    res
}

/// Backoff after a failed reconcile.
pub fn error_policy(pv: Arc<PersistentVolume>, err: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(pv = %pv.name_any(), error = %err, "deletion failed; will retry");
    ctx.retry(&key("pv", None, &pv.name_any()))
}

/// True when this PV is one of ours: provisioned by the driver, with a CSI source naming it.
pub fn is_ours(pv: &PersistentVolume) -> bool {
    pv.annotations().get(ANN_PROVISIONED_BY).map(String::as_str) == Some(DRIVER)
        && pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .is_some_and(|c| c.driver == DRIVER)
}

async fn delete(pv: &PersistentVolume, ctx: &Ctx) -> Result<Action> {
    let idle = Action::await_change();
    if !is_ours(pv) {
        return Ok(idle);
    }
    let name = pv.name_any();
    let spec = pv.spec.clone().unwrap_or_default();
    let phase = pv
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let deleting = pv.meta().deletion_timestamp.is_some();
    let has_finalizer = pv.finalizers().iter().any(|f| f == PV_FINALIZER);
    let reclaim_delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let released = phase == "Released" || (deleting && phase != "Bound");

    if !reclaim_delete {
        if deleting && has_finalizer {
            remove_finalizer(ctx, pv).await?;
        }
        return Ok(idle);
    }
    if !released {
        return Ok(idle);
    }
    if deleting && !has_finalizer {
        // Someone else is finishing this deletion; the volume was already deleted.
        return Ok(idle);
    }
    let volume_id = spec
        .csi
        .as_ref()
        .map(|c| c.volume_handle.clone())
        .unwrap_or_default();
    info!(pv = %name, volume_id = %volume_id, "deleting volume");
    if let Err(e) = ctx.csi.delete_volume(&volume_id).await {
        ctx.warn(&pv.object_ref(&()), "VolumeFailedDelete", e.to_string())
            .await;
        return Err(e);
    }
    if has_finalizer {
        remove_finalizer(ctx, pv).await?;
    }
    if !deleting {
        match Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(&name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_api_code(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    info!(pv = %name, volume_id = %volume_id, "volume deleted");
    ctx.capacity_trigger.notify_one();
    Ok(idle)
}

/// Removes our finalizer with a resourceVersion-guarded merge patch (409 → retried).
async fn remove_finalizer(ctx: &Ctx, pv: &PersistentVolume) -> Result<()> {
    let remaining: Vec<&String> = pv
        .finalizers()
        .iter()
        .filter(|f| *f != PV_FINALIZER)
        .collect();
    let patch = json!({
        "metadata": { "finalizers": remaining, "resourceVersion": pv.resource_version() }
    });
    match Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(
            &pv.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_api_code(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
