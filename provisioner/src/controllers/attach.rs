//! The attacher: VolumeAttachments for our driver → ControllerPublishVolume → status.attached
//! and attachmentMetadata (errors in status.attachError); deletion → unpublish, finalizers off.

use std::sync::Arc;

use cairn_proto::csi::v1::{self as csi, controller_service_capability::rpc::Type as Cap};
use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::context::{Ctx, key};
use crate::csi as csic;
use crate::error::{Error, Result, is_api_code};
use crate::names::{ATTACHER_FINALIZER, DRIVER};

const CONTROLLER: &str = "attacher";

/// Reconciles one VolumeAttachment.
pub async fn reconcile(va: Arc<VolumeAttachment>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = key("va", None, &va.name_any());
    let res = attach(&va, &ctx).await;
    ctx.finished(CONTROLLER, &k, &res);
    res
}

/// Backoff after a failed reconcile.
pub fn error_policy(va: Arc<VolumeAttachment>, err: &Error, ctx: Arc<Ctx>) -> Action {
    warn!(volumeattachment = %va.name_any(), error = %err, "attach/detach failed; will retry");
    ctx.retry(&key("va", None, &va.name_any()))
}

async fn attach(va: &VolumeAttachment, ctx: &Ctx) -> Result<Action> {
    let idle = Action::await_change();
    if va.spec.attacher != DRIVER {
        return Ok(idle);
    }
    let name = va.name_any();
    let node = va.spec.node_name.clone();
    let pv_name = va.spec.source.persistent_volume_name.clone();
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone());
    let pv = match &pv_name {
        Some(n) => pvs.get_opt(n).await?,
        None => None,
    };
    let has_finalizer = va.finalizers().iter().any(|f| f == ATTACHER_FINALIZER);

    if va.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(idle);
        }
        if let Some(pv) = &pv {
            let volume_id = volume_handle(pv)?;
            let node_id = node_id(ctx, &node).await?;
            info!(volume_id = %volume_id, node = %node, "controller unpublish");
            if let Err(e) = ctx.csi.unpublish(&volume_id, &node_id).await {
                set_status(
                    ctx,
                    &name,
                    json!({ "detachError": { "time": Time(now()), "message": e.to_string() } }),
                )
                .await?;
                return Err(e);
            }
        } else {
            warn!(volumeattachment = %name, "PV is gone; dropping the finalizer without unpublish");
        }
        set_status(
            ctx,
            &name,
            json!({ "attached": false, "attachmentMetadata": null, "detachError": null }),
        )
        .await?;
        // The PV first: once the VA's finalizer is gone the VA may vanish, and a failed
        // PV patch would then never be retried (the PV would keep our finalizer forever).
        if let Some(pv_name) = &pv_name {
            release_pv(ctx, pv_name, &name).await?;
        }
        patch_finalizers(&Api::<VolumeAttachment>::all(ctx.client.clone()), va, false).await?;
        return Ok(idle);
    }

    let Some(pv) = pv else {
        let msg = match &pv_name {
            Some(n) => format!("PersistentVolume {n:?} not found"),
            None => "inline volumes are not supported".to_string(),
        };
        set_status(
            ctx,
            &name,
            json!({ "attached": false, "attachError": { "time": Time(now()), "message": msg } }),
        )
        .await?;
        return Err(Error::Waiting(msg));
    };
    if !pv.finalizers().iter().any(|f| f == ATTACHER_FINALIZER) {
        patch_finalizers(&pvs, &pv, true).await?;
    }
    if !has_finalizer {
        patch_finalizers(&Api::<VolumeAttachment>::all(ctx.client.clone()), va, true).await?;
    }
    if va.status.as_ref().is_some_and(|s| s.attached) {
        return Ok(idle);
    }
    let volume_id = volume_handle(&pv)?;
    let node_id = node_id(ctx, &node).await?;
    let req = publish_request(ctx, &pv, volume_id.clone(), node_id).await?;
    info!(volume_id = %volume_id, node = %node, pv = ?pv_name, "controller publish");
    match ctx.csi.publish(req).await {
        Ok(publish_context) => {
            set_status(
                ctx,
                &name,
                json!({ "attached": true, "attachmentMetadata": publish_context, "attachError": null }),
            )
            .await?;
            Ok(idle)
        }
        Err(e) => {
            set_status(ctx, &name, json!({ "attached": false, "attachError": { "time": Time(now()), "message": e.to_string() } }))
                .await?;
            Err(e)
        }
    }
}

fn now() -> k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc> {
    k8s_openapi::chrono::Utc::now()
}

fn volume_handle(pv: &PersistentVolume) -> Result<String> {
    pv.spec
        .as_ref()
        .and_then(|s| s.csi.as_ref())
        .filter(|c| c.driver == DRIVER)
        .map(|c| c.volume_handle.clone())
        .ok_or_else(|| Error::Invalid(format!("PV {} has no {DRIVER} CSI source", pv.name_any())))
}

/// The driver's node id: CSINode, then the kubelet's node annotation, then the node name
/// (Cairn's node plugin reports the node name as its id).
pub async fn node_id(ctx: &Ctx, node: &str) -> Result<String> {
    if let Some(csinode) = Api::<CSINode>::all(ctx.client.clone())
        .get_opt(node)
        .await?
        && let Some(d) = csinode.spec.drivers.iter().find(|d| d.name == DRIVER)
    {
        return Ok(d.node_id.clone());
    }
    if let Some(n) = Api::<Node>::all(ctx.client.clone()).get_opt(node).await? {
        let ids = n
            .annotations()
            .get("csi.volume.kubernetes.io/nodeid")
            .cloned();
        if let Some(id) = ids
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v.get(DRIVER).and_then(Value::as_str).map(str::to_string))
        {
            return Ok(id);
        }
    }
    Ok(node.to_string())
}

async fn publish_request(
    ctx: &Ctx,
    pv: &PersistentVolume,
    volume_id: String,
    node_id: String,
) -> Result<csi::ControllerPublishVolumeRequest> {
    let spec = pv.spec.clone().unwrap_or_default();
    let source = spec.csi.clone().unwrap_or_default();
    let snmw = ctx.csi.has_capability(Cap::SingleNodeMultiWriter).await?;
    let block = spec.volume_mode.as_deref() == Some("Block");
    let modes = spec.access_modes.clone().unwrap_or_default();
    let cap = csic::capabilities(
        &modes[..modes.len().min(1)],
        block,
        source.fs_type.as_deref().unwrap_or_default(),
        spec.mount_options.as_deref().unwrap_or_default(),
        snmw,
    )?
    .into_iter()
    .next();
    Ok(csi::ControllerPublishVolumeRequest {
        volume_id,
        node_id,
        volume_capability: cap,
        readonly: source.read_only.unwrap_or(false),
        volume_context: source
            .volume_attributes
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Default::default()
    })
}

async fn set_status(ctx: &Ctx, name: &str, status: Value) -> Result<()> {
    Api::<VolumeAttachment>::all(ctx.client.clone())
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await?;
    Ok(())
}

/// Adds or removes the attacher finalizer with a resourceVersion-guarded merge patch.
async fn patch_finalizers<K>(api: &Api<K>, obj: &K, add: bool) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut f: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != ATTACHER_FINALIZER)
        .cloned()
        .collect();
    if add {
        f.push(ATTACHER_FINALIZER.to_string());
    }
    let patch =
        json!({ "metadata": { "finalizers": f, "resourceVersion": obj.resource_version() } });
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if !add && is_api_code(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Drops the PV finalizer once no other VolumeAttachment of ours references the PV.
/// Reads the PV afresh and retries a few conflicts (the deleter patches it concurrently).
async fn release_pv(ctx: &Ctx, pv_name: &str, this_va: &str) -> Result<()> {
    let vas = Api::<VolumeAttachment>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?;
    let others = vas.items.iter().any(|v| {
        v.name_any() != this_va
            && v.spec.attacher == DRIVER
            && v.spec.source.persistent_volume_name.as_deref() == Some(pv_name)
    });
    if others {
        return Ok(());
    }
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone());
    let mut attempts = 0;
    loop {
        let Some(pv) = pvs.get_opt(pv_name).await? else {
            return Ok(());
        };
        if !pv.finalizers().iter().any(|f| f == ATTACHER_FINALIZER) {
            return Ok(());
        }
        match patch_finalizers(&pvs, &pv, false).await {
            Err(Error::Kube(e)) if is_api_code(&e, 409) && attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}
