//! The provisioner: a pending claim of a Cairn class becomes CreateVolume `pvc-<uid>` and
//! then a PV (CSI source, nodeAffinity, claimRef, reclaim policy, finalizer), as upstream.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_proto::csi::v1::{
    self as csi, CapacityRange, controller_service_capability::rpc::Type as Cap,
};
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::cloning::{self, CLONE_FINALIZER};
use super::source;
use crate::claim::{class_name, requested_bytes};
use crate::context::{Ctx, key};
use crate::error::{Error, Result, is_api_code};
use crate::names::*;
use crate::{csi as csic, params, quantity, topology};

const CONTROLLER: &str = "provisioner";
/// How often a source claim being deleted checks again for pending clones of it.
const CLONE_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Reconciles one claim.
pub async fn reconcile(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Ctx>) -> Result<Action> {
    let k = key("pvc", pvc.namespace().as_deref(), &pvc.name_any());
    let res = provision(&pvc, &ctx).await;
    ctx.finished(CONTROLLER, &k, &res);
    res
}

/// Backoff after a failed reconcile.
pub fn error_policy(pvc: Arc<PersistentVolumeClaim>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let ns = pvc.namespace().unwrap_or_default();
    warn!(pvc = %format!("{ns}/{}", pvc.name_any()), error = %err, "provisioning failed; will retry");
    ctx.retry(&key("pvc", Some(&ns), &pvc.name_any()))
}

/// An unbound claim that may be ours to provision, as its object says (no API reads).
struct Pending {
    ns: String,
    name: String,
    uid: String,
    class_name: String,
    /// Whether the claim's `storage-provisioner` annotation names us.
    claimed: bool,
    /// The node the scheduler picked (`volume.kubernetes.io/selected-node`).
    selected: Option<String>,
    reference: ObjectReference,
}

impl Pending {
    /// `None` for a claim that is bound, being deleted, classless or another driver's.
    fn of(pvc: &PersistentVolumeClaim) -> Option<Pending> {
        let spec = pvc.spec.as_ref()?;
        if pvc.meta().deletion_timestamp.is_some()
            || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
        {
            return None;
        }
        let (uid, ns) = (pvc.uid()?, pvc.namespace()?);
        let ann = pvc.annotations();
        let claimed_by = ann
            .get(ANN_STORAGE_PROVISIONER)
            .or_else(|| ann.get(ANN_BETA_STORAGE_PROVISIONER));
        if claimed_by.is_some_and(|p| p != DRIVER) {
            return None;
        }
        Some(Pending {
            class_name: class_name(pvc)?,
            name: pvc.name_any(),
            ns,
            uid,
            claimed: claimed_by.is_some(),
            selected: ann.get(ANN_SELECTED_NODE).cloned(),
            reference: pvc.object_ref(&()),
        })
    }

    /// `ns/name`, for logs and messages.
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// A `ProvisioningFailed` Warning on the claim.
    async fn failed(&self, ctx: &Ctx, msg: String) {
        ctx.warn(&self.reference, "ProvisioningFailed", msg).await;
    }

    /// Asks the scheduler to pick a node again, with a Warning saying why.
    async fn reschedule(&self, ctx: &Ctx, msg: String) -> Result<()> {
        self.failed(ctx, msg).await;
        remove_selected_node(ctx, &self.ns, &self.name).await
    }
}

/// The steps, in order: a clone source being deleted, the claim, its class, WaitForFirstConsumer,
/// an existing PV, the request and its topology, CreateVolume, the PV, then what follows.
async fn provision(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action> {
    let idle = Action::await_change();
    if pvc.meta().deletion_timestamp.is_some()
        && pvc.finalizers().iter().any(|f| f == CLONE_FINALIZER)
    {
        return release_source(pvc, ctx).await;
    }
    let Some(p) = Pending::of(pvc) else {
        return Ok(idle);
    };
    let Some(class) = our_class(ctx, &p).await? else {
        return Ok(idle);
    };
    let wffc = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    if wffc && p.selected.is_none() {
        return Ok(idle);
    }
    let pv_name = pv_name(&p.uid);
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone());
    if pvs.get_opt(&pv_name).await?.is_some() {
        return Ok(idle);
    }
    let (req, fs_type) = match build_request(pvc, &class, &pv_name, ctx).await {
        Ok(r) => r,
        Err(e) => {
            let msg = format!(
                "failed to provision volume with StorageClass {:?}: {e}",
                p.class_name
            );
            p.failed(ctx, msg).await;
            return Err(e);
        }
    };
    let Some(req) = with_topology(ctx, &p, &class, req).await? else {
        return Ok(idle);
    };
    let requested = req
        .capacity_range
        .as_ref()
        .map(|c| c.required_bytes)
        .unwrap_or_default();
    let Some(volume) = create_volume(ctx, &p, req).await? else {
        return Ok(idle);
    };
    let identity = &ctx.provisioner_identity;
    let pv = build_pv(
        pvc, &class, &pv_name, &volume, requested, &fs_type, identity,
    );
    save_pv(ctx, &p, &pvs, &pv).await?;
    provisioned(ctx, pvc, &p, &pv_name, &volume).await;
    Ok(idle)
}

/// A source claim being deleted: its cloning protection goes once no pending claim clones it.
async fn release_source(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action> {
    let ns = pvc.namespace().unwrap_or_default();
    if !cloning::release(ctx, &ns, &pvc.name_any(), None).await? {
        return Ok(Action::requeue(CLONE_RECHECK));
    }
    Ok(Action::await_change())
}

/// The claim's StorageClass if it is ours. A missing class is waited for (with a Warning)
/// only when the claim is already marked for us; otherwise it is not our claim.
async fn our_class(ctx: &Ctx, p: &Pending) -> Result<Option<StorageClass>> {
    let class = match Api::<StorageClass>::all(ctx.client.clone())
        .get_opt(&p.class_name)
        .await?
    {
        Some(c) => c,
        None if p.claimed => {
            let msg = format!("storageclass.storage.k8s.io {:?} not found", p.class_name);
            p.failed(ctx, msg.clone()).await;
            return Err(Error::Waiting(msg));
        }
        None => return Ok(None),
    };
    Ok((class.provisioner == DRIVER).then_some(class))
}

/// `req` with its accessibility requirements: the selected node's segment, else the class's
/// allowed topologies. `None` when the selected node is gone (the claim is rescheduled).
async fn with_topology(
    ctx: &Ctx,
    p: &Pending,
    class: &StorageClass,
    mut req: csi::CreateVolumeRequest,
) -> Result<Option<csi::CreateVolumeRequest>> {
    let Some(node_name) = &p.selected else {
        req.accessibility_requirements = topology::from_allowed(class.allowed_topologies.as_ref());
        return Ok(Some(req));
    };
    match Api::<Node>::all(ctx.client.clone())
        .get_opt(node_name)
        .await?
    {
        Some(node) => {
            req.accessibility_requirements = Some(topology::for_selected_node(&node));
            Ok(Some(req))
        }
        None => {
            let msg = format!(
                "selected node {node_name:?} not found; asking the scheduler to pick again"
            );
            p.reschedule(ctx, msg).await?;
            Ok(None)
        }
    }
}

/// CreateVolume, with the `Provisioning` Event before it and a Warning on failure. `None`
/// when the selected node has no room (RESOURCE_EXHAUSTED): the claim is rescheduled.
async fn create_volume(
    ctx: &Ctx,
    p: &Pending,
    req: csi::CreateVolumeRequest,
) -> Result<Option<csi::Volume>> {
    let (key, class_name) = (p.key(), &p.class_name);
    info!(pvc = %key, pv = %req.name, node = ?p.selected, "provisioning");
    let msg = format!("External provisioner is provisioning volume for claim \"{key}\"");
    ctx.normal(&p.reference, "Provisioning", msg).await;
    match ctx.csi.create_volume(req).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.csi_code() == Some(tonic::Code::ResourceExhausted) && p.selected.is_some() => {
            let msg = format!(
                "failed to provision volume with StorageClass {class_name:?}: {e}; rescheduling"
            );
            p.reschedule(ctx, msg).await?;
            Ok(None)
        }
        Err(e) => {
            let msg = format!("failed to provision volume with StorageClass {class_name:?}: {e}");
            p.failed(ctx, msg).await;
            Err(e)
        }
    }
}

/// Creates the PV; one that already exists (a concurrent or earlier create) is fine.
async fn save_pv(
    ctx: &Ctx,
    p: &Pending,
    pvs: &Api<PersistentVolume>,
    pv: &PersistentVolume,
) -> Result<()> {
    match pvs.create(&PostParams::default(), pv).await {
        Ok(_) => Ok(()),
        Err(e) if is_api_code(&e, 409) => Ok(()),
        Err(e) => {
            let pv_name = pv.name_any();
            let msg = format!("failed to save PersistentVolume {pv_name:?}: {e}; will retry");
            p.failed(ctx, msg).await;
            Err(e.into())
        }
    }
}

/// After the PV is saved: the clone's source is released, `ProvisioningSucceeded`, and the
/// capacity publisher is woken.
async fn provisioned(
    ctx: &Ctx,
    pvc: &PersistentVolumeClaim,
    p: &Pending,
    pv_name: &str,
    volume: &csi::Volume,
) {
    if let Some(source) = cloning::clone_source(pvc)
        && let Err(e) = cloning::release(ctx, &p.ns, &source, Some(&p.uid)).await
    {
        // Retried when the source claim is deleted (it is reconciled then).
        warn!(pvc = %format!("{}/{source}", p.ns), error = %e, "cloning protection not removed yet");
    }
    info!(pvc = %p.key(), pv = %pv_name, volume_id = %volume.volume_id, "provisioned");
    let msg = format!("Successfully provisioned volume {pv_name}");
    ctx.normal(&p.reference, "ProvisioningSucceeded", msg).await;
    ctx.capacity_trigger.notify_one();
}

/// CreateVolume for the claim (without topology) and the fsType to record on the PV.
async fn build_request(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    pv_name: &str,
    ctx: &Ctx,
) -> Result<(csi::CreateVolumeRequest, String)> {
    let spec = pvc.spec.clone().unwrap_or_default();
    let volume_content_source = source::content_source(pvc, ctx).await?;
    let p = params::parse(class.parameters.as_ref())?;
    let required = requested_bytes(pvc)?;
    let limit = match spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("storage"))
    {
        Some(q) => quantity::to_bytes(q)?,
        None => 0,
    };
    let to_i64 =
        |b: u64| i64::try_from(b).map_err(|_| Error::Invalid(format!("size {b} is too large")));
    let block = spec.volume_mode.as_deref() == Some("Block");
    let snmw = ctx.csi.has_capability(Cap::SingleNodeMultiWriter).await?;
    let mount_options = class.mount_options.clone().unwrap_or_default();
    let caps = csic::capabilities(
        spec.access_modes.as_deref().unwrap_or_default(),
        block,
        &p.fs_type,
        &mount_options,
        snmw,
    )?;
    let fs_type = if block {
        String::new()
    } else {
        p.fs_type.clone()
    };
    let req = csi::CreateVolumeRequest {
        name: pv_name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes: to_i64(required)?,
            limit_bytes: to_i64(limit)?,
        }),
        volume_capabilities: caps,
        parameters: p.driver,
        volume_content_source,
        ..Default::default()
    };
    Ok((req, fs_type))
}

/// The PV external-provisioner would create for this claim and volume.
pub fn build_pv(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    pv_name: &str,
    volume: &csi::Volume,
    requested: i64,
    fs_type: &str,
    identity: &str,
) -> PersistentVolume {
    let spec = pvc.spec.clone().unwrap_or_default();
    let bytes = if volume.capacity_bytes > 0 {
        volume.capacity_bytes
    } else {
        requested
    };
    let mut attrs: BTreeMap<String, String> = volume.volume_context.clone().into_iter().collect();
    attrs.insert(ATTR_PROVISIONER_IDENTITY.into(), identity.to_string());
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_string()),
            annotations: Some([(ANN_PROVISIONED_BY.to_string(), DRIVER.to_string())].into()),
            finalizers: Some(vec![PV_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: spec.access_modes.clone(),
            capacity: Some(
                [(
                    "storage".to_string(),
                    quantity::from_bytes(bytes.max(0) as u64),
                )]
                .into(),
            ),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: pvc.namespace(),
                name: Some(pvc.name_any()),
                uid: pvc.uid(),
                resource_version: pvc.resource_version(),
                field_path: None,
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER.to_string(),
                volume_handle: volume.volume_id.clone(),
                fs_type: (!fs_type.is_empty()).then(|| fs_type.to_string()),
                volume_attributes: Some(attrs),
                ..Default::default()
            }),
            mount_options: class.mount_options.clone(),
            node_affinity: topology::node_affinity(&volume.accessible_topology),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".to_string()),
            ),
            storage_class_name: Some(class.metadata.name.clone().unwrap_or_default()),
            volume_mode: Some(
                spec.volume_mode
                    .clone()
                    .unwrap_or_else(|| "Filesystem".to_string()),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// Drops `volume.kubernetes.io/selected-node` so the scheduler picks a node again.
async fn remove_selected_node(ctx: &Ctx, ns: &str, name: &str) -> Result<()> {
    let patch = json!({ "metadata": { "annotations": { ANN_SELECTED_NODE: null } } });
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    info!(pvc = %format!("{ns}/{name}"), "removed selected-node for rescheduling");
    Ok(())
}
