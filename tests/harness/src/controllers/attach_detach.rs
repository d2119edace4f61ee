//! The attach/detach controller: one VolumeAttachment per (CSI PV, node) in use
//! by a scheduled pod when the driver requires attach; detach once unmounted.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{
    CSIDriver, VolumeAttachment, VolumeAttachmentSource, VolumeAttachmentSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::events::Recorder;
use crate::client::Client;

/// Upstream's VolumeAttachment name: `csi-<sha256(handle + driver + node)>`.
pub fn attachment_name(handle: &str, driver: &str, node: &str) -> String {
    format!(
        "csi-{}",
        hex::encode(Sha256::digest(format!("{handle}{driver}{node}").as_bytes()))
    )
}

/// The unique volume name kubelet reports in volumesInUse: `kubernetes.io/csi/<driver>^<handle>`.
pub fn unique_volume_name(driver: &str, handle: &str) -> String {
    format!("kubernetes.io/csi/{driver}^{handle}")
}

/// Whether the driver needs a VolumeAttachment: no CSIDriver object means yes.
pub fn attach_required(drivers: &[CSIDriver], driver: &str) -> bool {
    drivers
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(driver))
        .and_then(|d| d.spec.attach_required)
        .unwrap_or(true)
}

pub struct AttachDetachController {
    client: Client,
    events: Recorder,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Want {
    pv: String,
    driver: String,
    handle: String,
    node: String,
}

impl AttachDetachController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "attachdetach-controller", None);
        AttachDetachController { client, events }
    }

    pub fn reconcile(&self) {
        let drivers = self.client.list::<CSIDriver>(None);
        let pvs: BTreeMap<String, PersistentVolume> = self
            .client
            .list::<PersistentVolume>(None)
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        let claims: BTreeMap<(String, String), PersistentVolumeClaim> = self
            .client
            .list::<PersistentVolumeClaim>(None)
            .into_iter()
            .map(|c| {
                (
                    (
                        c.metadata.namespace.clone().unwrap_or_default(),
                        c.metadata.name.clone().unwrap_or_default(),
                    ),
                    c,
                )
            })
            .collect();
        let mut want: BTreeSet<Want> = BTreeSet::new();
        let mut users: BTreeMap<Want, Pod> = BTreeMap::new();
        for pod in self.client.list::<Pod>(None) {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            for v in pod
                .spec
                .as_ref()
                .and_then(|s| s.volumes.clone())
                .unwrap_or_default()
            {
                let Some(src) = v.persistent_volume_claim else {
                    continue;
                };
                let Some(pvname) = claims
                    .get(&(ns.clone(), src.claim_name))
                    .and_then(|c| c.spec.as_ref()?.volume_name.clone())
                else {
                    continue;
                };
                let Some(csi) = pvs.get(&pvname).and_then(|p| p.spec.as_ref()?.csi.clone()) else {
                    continue;
                };
                if !attach_required(&drivers, &csi.driver) {
                    continue;
                }
                let w = Want {
                    pv: pvname,
                    driver: csi.driver,
                    handle: csi.volume_handle,
                    node: node.clone(),
                };
                users.entry(w.clone()).or_insert_with(|| pod.clone());
                want.insert(w);
            }
        }
        let existing = self.client.list::<VolumeAttachment>(None);
        for w in &want {
            let name = attachment_name(&w.handle, &w.driver, &w.node);
            if existing
                .iter()
                .any(|va| va.metadata.name.as_deref() == Some(&name))
            {
                continue;
            }
            let va = VolumeAttachment {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                spec: VolumeAttachmentSpec {
                    attacher: w.driver.clone(),
                    node_name: w.node.clone(),
                    source: VolumeAttachmentSource {
                        persistent_volume_name: Some(w.pv.clone()),
                        ..Default::default()
                    },
                },
                status: None,
            };
            if self.client.create(&va).is_ok() {
                tracing::info!(pv = %w.pv, node = %w.node, attachment = %name, "attach requested");
                if let Some(p) = users.get(w) {
                    self.events.record_typed(
                        p,
                        "Normal",
                        "SuccessfulAttachVolume",
                        &format!("AttachVolume.Attach requested for volume \"{}\"", w.pv),
                    );
                }
            }
        }
        let nodes: BTreeMap<String, Node> = self
            .client
            .list::<Node>(None)
            .into_iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect();
        for va in &existing {
            let name = va.metadata.name.clone().unwrap_or_default();
            let pv = va
                .spec
                .source
                .persistent_volume_name
                .clone()
                .unwrap_or_default();
            let desired = want
                .iter()
                .any(|w| w.node == va.spec.node_name && w.pv == pv && w.driver == va.spec.attacher);
            if desired || va.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let handle = pvs
                .get(&pv)
                .and_then(|p| {
                    p.spec
                        .as_ref()?
                        .csi
                        .as_ref()
                        .map(|c| c.volume_handle.clone())
                })
                .unwrap_or_default();
            let unique = unique_volume_name(&va.spec.attacher, &handle);
            let in_use = nodes
                .get(&va.spec.node_name)
                .and_then(|n| n.status.as_ref()?.volumes_in_use.clone())
                .unwrap_or_default()
                .contains(&unique);
            if !in_use
                && self
                    .client
                    .delete::<VolumeAttachment>(None, &name, None)
                    .is_ok()
            {
                tracing::info!(pv = %pv, node = %va.spec.node_name, attachment = %name, "detach requested");
            }
        }
        self.report_attached(&nodes, &pvs);
    }

    /// node.status.volumesAttached mirrors the attached VolumeAttachments.
    fn report_attached(
        &self,
        nodes: &BTreeMap<String, Node>,
        pvs: &BTreeMap<String, PersistentVolume>,
    ) {
        let vas = self.client.list::<VolumeAttachment>(None);
        for (name, node) in nodes {
            let mut attached: Vec<String> = vas
                .iter()
                .filter(|va| {
                    &va.spec.node_name == name && va.status.as_ref().is_some_and(|s| s.attached)
                })
                .filter_map(|va| {
                    let pv = pvs.get(va.spec.source.persistent_volume_name.as_deref()?)?;
                    let csi = pv.spec.as_ref()?.csi.as_ref()?;
                    Some(unique_volume_name(&csi.driver, &csi.volume_handle))
                })
                .collect();
            attached.sort();
            let current: Vec<String> = node
                .status
                .as_ref()
                .and_then(|s| s.volumes_attached.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect();
            if current != attached {
                let list: Vec<_> = attached
                    .iter()
                    .map(|n| json!({"name": n, "devicePath": ""}))
                    .collect();
                let _ = self.client.patch_status::<Node>(
                    None,
                    name,
                    &json!({"status": {"volumesAttached": list}}),
                );
            }
        }
    }
}
