//! The StatefulSet controller: ordinal pods with stable names, PVCs from
//! volumeClaimTemplates, OrderedReady scaling, PVC retention, status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::events::Recorder;
use super::workload::{is_ready, is_terminal};
use crate::client::Client;

pub struct StatefulSetController {
    client: Client,
    events: Recorder,
}

fn owner_ref(sts: &StatefulSet, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: sts.metadata.name.clone().unwrap_or_default(),
        uid: sts.metadata.uid.clone().unwrap_or_default(),
        controller: Some(controller),
        block_owner_deletion: Some(true),
    }
}

/// `<name>-<hash>`: the revision of the pod template.
fn revision(sts: &StatefulSet) -> String {
    let tmpl = serde_json::to_vec(&sts.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let h = hex::encode(Sha256::digest(&tmpl));
    format!(
        "{}-{}",
        sts.metadata.name.as_deref().unwrap_or_default(),
        &h[..10]
    )
}

pub fn claim_name(template: &str, sts: &str, ordinal: i32) -> String {
    format!("{template}-{sts}-{ordinal}")
}

impl StatefulSetController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "statefulset-controller", None);
        StatefulSetController { client, events }
    }

    pub fn reconcile(&self) {
        for sts in self.client.list::<StatefulSet>(None) {
            if sts.metadata.deletion_timestamp.is_none() {
                self.sync(&sts);
            }
        }
    }

    fn sync(&self, sts: &StatefulSet) {
        let ns = sts.metadata.namespace.clone().unwrap_or_default();
        let name = sts.metadata.name.clone().unwrap_or_default();
        let spec = sts.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let rev = revision(sts);
        let uid = sts.metadata.uid.clone();
        let mut pods: BTreeMap<i32, Pod> = BTreeMap::new();
        for p in self.client.list::<Pod>(Some(&ns)) {
            let owned = p
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
            let ord = p
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix(&format!("{name}-")))
                .and_then(|o| o.parse::<i32>().ok());
            if let (true, Some(o)) = (owned, ord) {
                pods.insert(o, p);
            }
        }
        let range = start..start + replicas;
        // Failed or succeeded pods are deleted so they can be recreated.
        for (ord, p) in &pods {
            if is_terminal(p) && p.metadata.deletion_timestamp.is_none() && range.contains(ord) {
                self.delete_pod(sts, p);
            }
        }
        let mut blocked = false;
        for ord in range.clone() {
            match pods.get(&ord) {
                None => {
                    if blocked && !parallel {
                        break;
                    }
                    self.create_claims(sts, ord);
                    self.create_pod(sts, ord, &rev);
                    if !parallel {
                        blocked = true;
                    }
                }
                Some(p) => {
                    if p.metadata.deletion_timestamp.is_some() || !is_ready(p) {
                        blocked = true;
                    }
                }
            }
            if blocked && !parallel {
                break;
            }
        }
        // Scale down from the highest ordinal, one at a time unless Parallel.
        let all_healthy = pods
            .iter()
            .filter(|(o, _)| range.contains(o))
            .all(|(_, p)| is_ready(p) && p.metadata.deletion_timestamp.is_none());
        let terminating = pods
            .values()
            .any(|p| p.metadata.deletion_timestamp.is_some());
        let condemned: Vec<&Pod> = pods
            .iter()
            .rev()
            .filter(|(o, _)| !range.contains(o))
            .map(|(_, p)| p)
            .collect();
        for p in condemned
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            if !parallel && (terminating || !all_healthy) {
                break;
            }
            self.delete_pod(sts, p);
            if !parallel {
                break;
            }
        }
        // Rolling update: replace the highest-ordinal pod of an old revision when all are ready.
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling
            && all_healthy
            && !terminating
            && condemned.is_empty()
            && pods.len() as i32 == replicas
        {
            let partition = spec
                .update_strategy
                .as_ref()
                .and_then(|u| u.rolling_update.as_ref())
                .and_then(|r| r.partition)
                .unwrap_or(0);
            let stale = pods.iter().rev().find(|(o, p)| {
                **o >= start + partition
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("controller-revision-hash"))
                        != Some(&rev)
            });
            if let Some((_, p)) = stale {
                self.delete_pod(sts, p);
            }
        }
        self.retain_claims(sts, &pods, &range);
        self.update_status(sts, &pods, &rev);
    }

    fn create_claims(&self, sts: &StatefulSet, ord: i32) {
        let spec = sts.spec.clone().unwrap_or_default();
        let (ns, name) = (
            sts.metadata.namespace.clone(),
            sts.metadata.name.clone().unwrap_or_default(),
        );
        let when_deleted = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_deleted.clone());
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let cname = claim_name(&tname, &name, ord);
            if self
                .client
                .get::<PersistentVolumeClaim>(ns.as_deref(), &cname)
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let owners =
                (when_deleted.as_deref() == Some("Delete")).then(|| vec![owner_ref(sts, false)]);
            let pvc = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(cname.clone()),
                    namespace: ns.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    owner_references: owners,
                    ..Default::default()
                },
                spec: t.spec.clone(),
                status: None,
            };
            match self.client.create(&pvc) {
                Ok(_) => self.events.record_typed(sts, "Normal", "SuccessfulCreate", &format!(
                    "create Claim {cname} Pod {name}-{ord} in StatefulSet {name} success"
                )),
                Err(e) if e.is_already_exists() => {}
                Err(e) => self.events.record_typed(sts, "Warning", "FailedCreate", &format!(
                    "create Claim {cname} for Pod {name}-{ord} in StatefulSet {name} failed error: {e}"
                )),
            }
        }
    }

    fn create_pod(&self, sts: &StatefulSet, ord: i32, rev: &str) {
        let spec = sts.spec.clone().unwrap_or_default();
        let (ns, name) = (
            sts.metadata.namespace.clone(),
            sts.metadata.name.clone().unwrap_or_default(),
        );
        let pod_name = format!("{name}-{ord}");
        let tmpl = spec.template.clone();
        let mut labels = tmpl
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(
            "statefulset.kubernetes.io/pod-name".into(),
            pod_name.clone(),
        );
        labels.insert("apps.kubernetes.io/pod-index".into(), ord.to_string());
        labels.insert("controller-revision-hash".into(), rev.into());
        let mut pspec = tmpl.spec.clone().unwrap_or_default();
        pspec.hostname = Some(pod_name.clone());
        if !spec.service_name.as_deref().unwrap_or_default().is_empty() {
            pspec.subdomain = spec.service_name.clone();
        }
        let volumes = pspec.volumes.get_or_insert_with(Vec::new);
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&tname, &name, ord),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.clone()),
                namespace: ns,
                labels: Some(labels),
                annotations: tmpl.metadata.as_ref().and_then(|m| m.annotations.clone()),
                owner_references: Some(vec![owner_ref(sts, true)]),
                ..Default::default()
            },
            spec: Some(pspec),
            status: None,
        };
        match self.client.create(&pod) {
            Ok(_) => {
                tracing::info!(statefulset = %name, pod = %pod_name, "pod created");
                self.events.record_typed(
                    sts,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("create Pod {pod_name} in StatefulSet {name} successful"),
                );
            }
            Err(e) if e.is_already_exists() => {}
            Err(e) => self.events.record_typed(
                sts,
                "Warning",
                "FailedCreate",
                &format!("create Pod {pod_name} in StatefulSet {name} failed error: {e}"),
            ),
        }
    }

    fn delete_pod(&self, sts: &StatefulSet, p: &Pod) {
        let (ns, pname) = (
            p.metadata.namespace.as_deref(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        if self.client.delete::<Pod>(ns, &pname, None).is_ok() {
            let name = sts.metadata.name.clone().unwrap_or_default();
            tracing::info!(statefulset = %name, pod = %pname, "pod deleted");
            self.events.record_typed(
                sts,
                "Normal",
                "SuccessfulDelete",
                &format!("delete Pod {pname} in StatefulSet {name} successful"),
            );
        }
    }

    /// whenScaled: Delete removes the claims of ordinals scaled away, once their pod is gone.
    fn retain_claims(
        &self,
        sts: &StatefulSet,
        pods: &BTreeMap<i32, Pod>,
        range: &std::ops::Range<i32>,
    ) {
        let spec = sts.spec.clone().unwrap_or_default();
        let when_scaled = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .and_then(|p| p.when_scaled.clone());
        if when_scaled.as_deref() != Some("Delete") {
            return;
        }
        let (ns, name) = (
            sts.metadata.namespace.clone(),
            sts.metadata.name.clone().unwrap_or_default(),
        );
        for pvc in self.client.list::<PersistentVolumeClaim>(ns.as_deref()) {
            let cname = pvc.metadata.name.clone().unwrap_or_default();
            for t in spec.volume_claim_templates.iter().flatten() {
                let prefix = format!("{}-{name}-", t.metadata.name.as_deref().unwrap_or_default());
                let ord = cname
                    .strip_prefix(&prefix)
                    .and_then(|o| o.parse::<i32>().ok());
                if let Some(o) = ord
                    && !range.contains(&o)
                    && !pods.contains_key(&o)
                    && pvc.metadata.deletion_timestamp.is_none()
                {
                    let _ =
                        self.client
                            .delete::<PersistentVolumeClaim>(ns.as_deref(), &cname, None);
                }
            }
        }
    }

    fn update_status(&self, sts: &StatefulSet, pods: &BTreeMap<i32, Pod>, rev: &str) {
        let count = pods.len() as i32;
        let ready = pods
            .values()
            .filter(|p| is_ready(p) && p.metadata.deletion_timestamp.is_none())
            .count() as i32;
        let updated = pods
            .values()
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("controller-revision-hash"))
                    .map(String::as_str)
                    == Some(rev)
            })
            .count() as i32;
        let status = json!({
            "observedGeneration": sts.metadata.generation,
            "replicas": count, "readyReplicas": ready, "currentReplicas": updated, "updatedReplicas": updated,
            "availableReplicas": ready, "currentRevision": rev, "updateRevision": rev, "collisionCount": 0,
        });
        let cur = serde_json::to_value(&sts.status).unwrap_or_default();
        let differs = [
            "observedGeneration",
            "replicas",
            "readyReplicas",
            "updatedReplicas",
            "availableReplicas",
            "currentRevision",
        ]
        .iter()
        .any(|k| cur[*k] != status[*k]);
        if differs {
            let (ns, name) = (
                sts.metadata.namespace.as_deref(),
                sts.metadata.name.as_deref().unwrap_or_default(),
            );
            let _ = self
                .client
                .patch_status::<StatefulSet>(ns, name, &json!({"status": status}));
        }
    }
}
