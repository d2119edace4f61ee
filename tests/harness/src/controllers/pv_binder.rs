//! The PV binder (upstream pv-controller plus pvc/pv-protection): binds claims
//! to volumes, marks claims for external provisioning, phases, reclaim.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde_json::json;

use super::events::Recorder;
use crate::client::Client;
use crate::pvutil::*;

pub struct PvBinder {
    client: Client,
    events: Recorder,
}

fn ann(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key).cloned())
}

fn phase_pv(pv: &PersistentVolume) -> String {
    pv.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into())
}

fn key(ns: &Option<String>, name: &Option<String>) -> String {
    format!(
        "{}/{}",
        ns.as_deref().unwrap_or_default(),
        name.as_deref().unwrap_or_default()
    )
}

impl PvBinder {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "persistentvolume-controller", None);
        PvBinder { client, events }
    }

    /// One level-triggered pass over every claim and volume.
    pub fn reconcile(&self) {
        let classes: BTreeMap<String, StorageClass> = self
            .client
            .list::<StorageClass>(None)
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let pvs = self.client.list::<PersistentVolume>(None);
        let claims = self.client.list::<PersistentVolumeClaim>(None);
        for pvc in &claims {
            self.sync_claim(pvc, &pvs, &classes);
        }
        let claims = self.client.list::<PersistentVolumeClaim>(None);
        let by_key: BTreeMap<String, &PersistentVolumeClaim> = claims
            .iter()
            .map(|c| (key(&c.metadata.namespace, &c.metadata.name), c))
            .collect();
        for pv in self.client.list::<PersistentVolume>(None) {
            self.sync_volume(&pv, &by_key);
        }
        self.protection(&claims);
    }

    fn sync_claim(
        &self,
        pvc: &PersistentVolumeClaim,
        pvs: &[PersistentVolume],
        classes: &BTreeMap<String, StorageClass>,
    ) {
        if pvc.metadata.deletion_timestamp.is_some() {
            return;
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let volume_name = spec.volume_name.clone().unwrap_or_default();
        let bound = ann(&pvc.metadata, ANN_BIND_COMPLETED).is_some();
        if bound && !volume_name.is_empty() {
            match pvs.iter().find(|p| p.metadata.name.as_deref() == Some(&volume_name)) {
                None => self.set_claim_phase(pvc, "Lost", None, "ClaimLost", "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!"),
                Some(pv) if !pv_bound_to_claim(pv, pvc) && pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some() => {
                    self.set_claim_phase(pvc, "Lost", None, "ClaimMisbound", "Two claims are bound to the same volume, this one is bound incorrectly")
                }
                Some(pv) => {
                    if pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_none() {
                        self.bind(pv, pvc);
                    } else {
                        self.set_claim_phase(pvc, "Bound", Some(pv), "", "");
                    }
                }
            }
            return;
        }
        if !volume_name.is_empty() {
            // Pre-bound by the user or the provisioner: bind to that PV when it exists and is free.
            match pvs
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(&volume_name))
            {
                Some(pv)
                    if pv
                        .spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_none()
                        || pv_bound_to_claim(pv, pvc) =>
                {
                    self.bind(pv, pvc)
                }
                Some(_) => self.events.record_typed(
                    pvc,
                    "Warning",
                    "FailedBinding",
                    &format!("volume \"{volume_name}\" already bound to a different claim."),
                ),
                None => {}
            }
            return;
        }
        let class_name = claim_class(pvc);
        let class = classes.get(&class_name);
        let delay = is_wffc(class);
        let selected = ann(&pvc.metadata, ANN_SELECTED_NODE);
        // Under WaitForFirstConsumer only a PV pre-bound by the scheduler binds
        // before a node is selected; after, only PVs admitting that node.
        let node = selected.as_ref().and_then(|n| {
            self.client
                .get::<k8s_openapi::api::core::v1::Node>(None, n)
                .ok()
                .flatten()
        });
        let candidate = if delay {
            match (&selected, &node) {
                (Some(_), Some(n)) => find_best_match(pvs, pvc, Some(n)),
                _ => pvs
                    .iter()
                    .find(|pv| pv_bound_to_claim(pv, pvc) && pv_satisfies(pv, pvc)),
            }
        } else {
            find_best_match(pvs, pvc, None)
        };
        if let Some(pv) = candidate {
            self.bind(pv, pvc);
            return;
        }
        let provisioner = class.map(|c| c.provisioner.clone()).unwrap_or_default();
        if delay && selected.is_none() {
            self.events.record_typed(
                pvc,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding",
            );
        } else if !class_name.is_empty() && class.is_some() && provisioner != NO_PROVISIONER {
            {
                if ann(&pvc.metadata, ANN_STORAGE_PROVISIONER).as_deref() != Some(&provisioner) {
                    let patch = json!({"metadata": {"annotations": {ANN_STORAGE_PROVISIONER: provisioner, ANN_BETA_STORAGE_PROVISIONER: provisioner}}});
                    let (ns, name) = (
                        pvc.metadata.namespace.as_deref(),
                        pvc.metadata.name.as_deref().unwrap_or_default(),
                    );
                    if self
                        .client
                        .patch::<PersistentVolumeClaim>(ns, name, &patch)
                        .is_ok()
                    {
                        tracing::info!(pvc = %key(&pvc.metadata.namespace, &pvc.metadata.name), provisioner, "claim marked for external provisioning");
                    }
                }
                self.events.record_typed(pvc, "Normal", "ExternalProvisioning", &format!(
                    "Waiting for a volume to be created either by the external provisioner '{provisioner}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered."
                ));
            }
        } else if !class_name.is_empty() && class.is_none() {
            self.events.record_typed(
                pvc,
                "Warning",
                "ProvisioningFailed",
                &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
            );
        } else {
            self.events.record_typed(
                pvc,
                "Normal",
                "FailedBinding",
                "no persistent volumes available for this claim and no storage class is set",
            );
        }
    }

    /// Binds in upstream order: PV claimRef, PV phase, claim volumeName, claim phase.
    fn bind(&self, pv: &PersistentVolume, pvc: &PersistentVolumeClaim) {
        let (pvname, claim) = (
            pv.metadata.name.clone().unwrap_or_default(),
            key(&pvc.metadata.namespace, &pvc.metadata.name),
        );
        let mut pv = pv.clone();
        let spec = pv.spec.get_or_insert_with(Default::default);
        let already = spec
            .claim_ref
            .as_ref()
            .is_some_and(|c| c.uid == pvc.metadata.uid);
        if !already {
            if spec.claim_ref.is_none() {
                pv.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            pv.spec.get_or_insert_with(Default::default).claim_ref = Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: pvc.metadata.name.clone(),
                namespace: pvc.metadata.namespace.clone(),
                uid: pvc.metadata.uid.clone(),
                resource_version: pvc.metadata.resource_version.clone(),
                field_path: None,
            });
            match self.client.replace(&pv) {
                Ok(p) => pv = p,
                Err(e) => {
                    return tracing::debug!(pv = %pvname, pvc = %claim, error = %e, "bind: pv update");
                }
            }
        }
        if phase_pv(&pv) != "Bound" {
            let _ = self.client.patch_status::<PersistentVolume>(
                None,
                &pvname,
                &json!({"status": {"phase": "Bound"}}),
            );
        }
        let mut c = pvc.clone();
        let done = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(&pvname)
            && ann(&c.metadata, ANN_BIND_COMPLETED).is_some();
        if !done {
            c.spec.get_or_insert_with(Default::default).volume_name = Some(pvname.clone());
            let anns = c.metadata.annotations.get_or_insert_with(Default::default);
            anns.insert(ANN_BIND_COMPLETED.into(), "yes".into());
            if !already {
                anns.insert(ANN_BOUND_BY_CONTROLLER.into(), "yes".into());
            }
            match self.client.replace(&c) {
                Ok(x) => c = x,
                Err(e) => {
                    return tracing::debug!(pv = %pvname, pvc = %claim, error = %e, "bind: claim update");
                }
            }
        }
        self.set_claim_phase(&c, "Bound", Some(&pv), "", "");
        tracing::info!(pv = %pvname, pvc = %claim, "bound");
    }

    fn set_claim_phase(
        &self,
        pvc: &PersistentVolumeClaim,
        phase: &str,
        pv: Option<&PersistentVolume>,
        reason: &str,
        message: &str,
    ) {
        let mut status = json!({"phase": phase});
        if let Some(ps) = pv.and_then(|p| p.spec.as_ref()) {
            status["accessModes"] = json!(ps.access_modes);
            let cur = pvc.status.as_ref().and_then(|s| s.capacity.clone());
            // Capacity follows the PV, except while an expansion is in flight.
            status["capacity"] = match cur {
                Some(c)
                    if c.contains_key("storage")
                        && pvc
                            .status
                            .as_ref()
                            .and_then(|s| s.allocated_resources.as_ref())
                            .is_some() =>
                {
                    json!(c)
                }
                _ => json!(ps.capacity),
            };
        }
        let cur = pvc
            .status
            .as_ref()
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or_default();
        let changed = cur["phase"] != phase
            || status
                .get("capacity")
                .is_some_and(|c| cur["capacity"].is_null() && !c.is_null());
        if !changed {
            return;
        }
        let (ns, name) = (
            pvc.metadata.namespace.as_deref(),
            pvc.metadata.name.as_deref().unwrap_or_default(),
        );
        if self
            .client
            .patch_status::<PersistentVolumeClaim>(ns, name, &json!({"status": status}))
            .is_ok()
            && !reason.is_empty()
        {
            self.events.record_typed(pvc, "Warning", reason, message);
        }
    }

    fn sync_volume(
        &self,
        pv: &PersistentVolume,
        claims: &BTreeMap<String, &PersistentVolumeClaim>,
    ) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let phase = phase_pv(pv);
        let set_phase = |p: &str, reason: Option<&str>, msg: Option<&str>| {
            if phase != p {
                let mut st = json!({"phase": p});
                if let Some(r) = reason {
                    st["reason"] = json!(r);
                    st["message"] = json!(msg.unwrap_or_default());
                }
                st["lastPhaseTransitionTime"] = json!(crate::registry::now());
                let _ = self.client.patch_status::<PersistentVolume>(
                    None,
                    &name,
                    &json!({"status": st}),
                );
                tracing::info!(pv = %name, from = %phase, to = p, "volume phase");
            }
        };
        let Some(cr) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
            set_phase("Available", None, None);
            return;
        };
        if cr.uid.as_deref().is_none_or(str::is_empty) {
            // Pre-bound to a claim by name; the claim sync completes it.
            set_phase("Available", None, None);
            return;
        }
        let claim = claims
            .get(&key(&cr.namespace, &cr.name))
            .filter(|c| c.metadata.uid == cr.uid);
        match claim {
            Some(c) => {
                let vol = c
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_default();
                if vol == name {
                    set_phase("Bound", None, None);
                } else if !vol.is_empty() && ann(&pv.metadata, ANN_BOUND_BY_CONTROLLER).is_some() {
                    // The claim went elsewhere; release our controller-made claimRef.
                    let patch = json!({"spec": {"claimRef": null}});
                    let _ = self.client.patch::<PersistentVolume>(None, &name, &patch);
                }
            }
            None => {
                if phase != "Released" && phase != "Failed" {
                    set_phase("Released", None, None);
                    return;
                }
                self.reclaim(pv, &phase);
            }
        }
    }

    fn reclaim(&self, pv: &PersistentVolume, phase: &str) {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let policy = pv
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.clone())
            .unwrap_or_else(|| "Retain".into());
        match policy.as_str() {
            "Retain" => {}
            "Delete" if ann(&pv.metadata, ANN_PROVISIONED_BY).is_some() => {
                // The external provisioner deletes the asset and then the PV.
            }
            _ if phase == "Released" => {
                let msg = format!(
                    "error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched"
                );
                let _ = self.client.patch_status::<PersistentVolume>(None, &name, &json!({"status": {"phase": "Failed", "message": msg, "reason": "VolumeFailedDelete"}}));
                self.events
                    .record_typed(pv, "Warning", "VolumeFailedDelete", &msg);
            }
            _ => {}
        }
    }

    /// pvc-protection and pv-protection: drop the finalizer once nothing uses the object.
    fn protection(&self, claims: &[PersistentVolumeClaim]) {
        let pods = self.client.list::<Pod>(None);
        for pvc in claims
            .iter()
            .filter(|c| c.metadata.deletion_timestamp.is_some())
        {
            let (ns, name) = (
                pvc.metadata.namespace.clone().unwrap_or_default(),
                pvc.metadata.name.clone().unwrap_or_default(),
            );
            let in_use = pods.iter().any(|p| {
                let terminal = matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                p.metadata.namespace.as_deref() == Some(&ns)
                    && !terminal
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.volumes.as_ref())
                        .into_iter()
                        .flatten()
                        .any(|v| {
                            v.persistent_volume_claim
                                .as_ref()
                                .is_some_and(|c| c.claim_name == name)
                        })
            });
            if !in_use {
                self.remove_finalizer::<PersistentVolumeClaim>(
                    Some(&ns),
                    &name,
                    pvc.metadata.finalizers.as_deref(),
                    PVC_PROTECTION,
                );
            }
        }
        for pv in self
            .client
            .list::<PersistentVolume>(None)
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            if phase_pv(pv) != "Bound" {
                let name = pv.metadata.name.clone().unwrap_or_default();
                self.remove_finalizer::<PersistentVolume>(
                    None,
                    &name,
                    pv.metadata.finalizers.as_deref(),
                    PV_PROTECTION,
                );
            }
        }
    }

    fn remove_finalizer<K: crate::client::Scoped>(
        &self,
        ns: Option<&str>,
        name: &str,
        current: Option<&[String]>,
        finalizer: &str,
    ) {
        let list = current.unwrap_or_default();
        if !list.iter().any(|f| f == finalizer) {
            return;
        }
        let kept: Vec<&String> = list.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": kept}});
        if self.client.patch::<K>(ns, name, &patch).is_ok() {
            tracing::info!(object = name, finalizer, "finalizer removed");
        }
    }
}
