//! The Deployment controller: one ReplicaSet per pod template (named and labelled by
//! its `pod-template-hash`), rolled by RollingUpdate or Recreate, status and history.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use super::events::Recorder;
use super::workload::{controlled_by, controller_ref, is_terminal, scaled, template_hash};
use crate::client::Client;

pub const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

pub struct DeploymentController {
    client: Client,
    events: Recorder,
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet, f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32) -> i32 {
    rs.status.as_ref().map_or(0, f)
}

fn available(rs: &ReplicaSet) -> i32 {
    status_of(rs, |s| s.available_replicas.unwrap_or(0))
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl DeploymentController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "deployment-controller", None);
        DeploymentController { client, events }
    }

    pub fn reconcile(&self) {
        for d in self.client.list::<Deployment>(None) {
            if d.metadata.deletion_timestamp.is_none() {
                self.sync(&d);
            }
        }
    }

    fn sync(&self, d: &Deployment) {
        let ns = d.metadata.namespace.clone();
        let spec = d.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1).max(0);
        let hash = template_hash(&spec.template);
        let mut owned: Vec<ReplicaSet> = self
            .client
            .list::<ReplicaSet>(ns.as_deref())
            .into_iter()
            .filter(|rs| controlled_by(&rs.metadata, d.metadata.uid.as_ref()))
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        owned.sort_by_key(revision);
        let is_new = |rs: &ReplicaSet| {
            rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash)
        };
        let mut new_rs = owned.iter().find(|rs| is_new(rs)).cloned();
        let mut old: Vec<ReplicaSet> = owned.iter().filter(|rs| !is_new(rs)).cloned().collect();
        if new_rs.is_none() && spec.paused != Some(true) {
            let next = owned.iter().map(revision).max().unwrap_or(0) + 1;
            new_rs = self.create_rs(d, &hash, next);
        }
        let Some(mut new_rs) = new_rs else {
            return self.update_status(d, None, &old);
        };
        if spec.paused != Some(true) {
            let strategy = spec.strategy.clone().unwrap_or_default();
            if strategy.type_.as_deref() == Some("Recreate") {
                self.recreate(d, want, &mut new_rs, &mut old);
            } else {
                let ru = serde_json::to_value(&strategy.rolling_update).unwrap_or_default();
                let surge = scaled(ru.get("maxSurge"), want, true, 1);
                let mut unavailable = scaled(ru.get("maxUnavailable"), want, false, 0);
                if surge == 0 && unavailable == 0 {
                    unavailable = 1;
                }
                self.roll(d, want, surge, unavailable, &mut new_rs, &mut old);
            }
            self.set_revision(d, revision(&new_rs));
            self.cleanup(d, &old);
        }
        self.update_status(d, Some(&new_rs), &old);
    }

    fn create_rs(&self, d: &Deployment, hash: &str, revision: i64) -> Option<ReplicaSet> {
        let spec = d.spec.clone().unwrap_or_default();
        let dname = d.metadata.name.clone().unwrap_or_default();
        let name = format!("{dname}-{hash}");
        let mut template: PodTemplateSpec = spec.template.clone();
        let tmeta = template.metadata.get_or_insert_with(Default::default);
        let mut labels = tmeta.labels.clone().unwrap_or_default();
        labels.insert(HASH_LABEL.into(), hash.into());
        tmeta.labels = Some(labels.clone());
        let mut selector = spec.selector.clone();
        let mut ml = selector.match_labels.clone().unwrap_or_default();
        ml.insert(HASH_LABEL.into(), hash.into());
        selector.match_labels = Some(ml);
        let want = spec.replicas.unwrap_or(1);
        let annotations = BTreeMap::from([
            (REVISION.to_string(), revision.to_string()),
            (
                "deployment.kubernetes.io/desired-replicas".to_string(),
                want.to_string(),
            ),
        ]);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref("Deployment", &d.metadata)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self.client.create(&rs) {
            Ok(rs) => {
                tracing::info!(deployment = %dname, replicaset = %name, "replica set created");
                self.events.record_typed(
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Created new replica set \"{name}\""),
                );
                Some(rs)
            }
            Err(e) if e.is_already_exists() => self
                .client
                .get::<ReplicaSet>(d.metadata.namespace.as_deref(), &name)
                .ok()
                .flatten(),
            Err(e) => {
                tracing::warn!(deployment = %dname, error = %e, "replica set not created");
                None
            }
        }
    }

    /// Sets a ReplicaSet's replicas (and the local copy), with upstream's event.
    fn scale(&self, d: &Deployment, rs: &mut ReplicaSet, to: i32) {
        let from = replicas(rs);
        if from == to {
            return;
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({"spec": {"replicas": to},
            "metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).to_string()}}});
        match self
            .client
            .patch::<ReplicaSet>(rs.metadata.namespace.as_deref(), &name, &patch)
        {
            Ok(updated) => {
                let verb = if to > from { "up" } else { "down" };
                tracing::info!(replicaset = %name, from, to, "scaled");
                self.events.record_typed(
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled {verb} replica set {name} from {from} to {to}"),
                );
                *rs = updated;
            }
            Err(e) => tracing::warn!(replicaset = %name, error = %e, "scale failed"),
        }
    }

    /// RollingUpdate: grow the new set within `want + surge` pods, shrink old sets
    /// while at least `want - unavailable` pods stay available.
    fn roll(
        &self,
        d: &Deployment,
        want: i32,
        surge: i32,
        unavailable: i32,
        new_rs: &mut ReplicaSet,
        old: &mut [ReplicaSet],
    ) {
        let total = |new_rs: &ReplicaSet, old: &[ReplicaSet]| {
            replicas(new_rs) + old.iter().map(replicas).sum::<i32>()
        };
        let cur = replicas(new_rs);
        if cur > want {
            self.scale(d, new_rs, want);
        } else if cur < want {
            let room = want + surge - total(new_rs, old);
            if room > 0 {
                self.scale(d, new_rs, want.min(cur + room));
            }
        }
        let min_available = want - unavailable;
        // Unhealthy old pods first: removing them costs no availability.
        let new_unavailable = (replicas(new_rs) - available(new_rs)).max(0);
        let mut budget = total(new_rs, old) - min_available - new_unavailable;
        for rs in old.iter_mut() {
            if budget <= 0 {
                break;
            }
            let unhealthy = (replicas(rs) - available(rs)).max(0).min(budget);
            if unhealthy > 0 {
                self.scale(d, rs, replicas(rs) - unhealthy);
                budget -= unhealthy;
            }
        }
        // Then healthy ones, oldest first, as far as availability allows.
        let all_available = available(new_rs) + old.iter().map(available).sum::<i32>();
        let mut removable = all_available - min_available - new_unavailable;
        for rs in old.iter_mut() {
            if removable <= 0 {
                break;
            }
            let n = replicas(rs).min(removable);
            if n > 0 {
                self.scale(d, rs, replicas(rs) - n);
                removable -= n;
            }
        }
    }

    /// Recreate: every old pod gone before the new set grows.
    fn recreate(&self, d: &Deployment, want: i32, new_rs: &mut ReplicaSet, old: &mut [ReplicaSet]) {
        for rs in old.iter_mut() {
            self.scale(d, rs, 0);
        }
        let old_uids: Vec<Option<String>> = old.iter().map(|rs| rs.metadata.uid.clone()).collect();
        let old_pods_left = self
            .client
            .list::<Pod>(d.metadata.namespace.as_deref())
            .iter()
            .any(|p| {
                !is_terminal(p)
                    && old_uids
                        .iter()
                        .any(|u| controlled_by(&p.metadata, u.as_ref()))
            });
        if !old_pods_left {
            self.scale(d, new_rs, want);
        }
    }

    fn set_revision(&self, d: &Deployment, rev: i64) {
        let cur = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION));
        if cur.map(String::as_str) != Some(&rev.to_string()) {
            let name = d.metadata.name.as_deref().unwrap_or_default();
            let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
            let _ = self
                .client
                .patch::<Deployment>(d.metadata.namespace.as_deref(), name, &patch);
        }
    }

    /// Deletes the oldest empty old ReplicaSets beyond `revisionHistoryLimit`.
    fn cleanup(&self, d: &Deployment, old: &[ReplicaSet]) {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let empty: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| replicas(rs) == 0 && status_of(rs, |s| s.replicas) == 0)
            .collect();
        for rs in empty.iter().take(empty.len().saturating_sub(limit)) {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let _ = self
                .client
                .delete::<ReplicaSet>(rs.metadata.namespace.as_deref(), &name, None);
        }
    }

    fn update_status(&self, d: &Deployment, new_rs: Option<&ReplicaSet>, old: &[ReplicaSet]) {
        let spec = d.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1);
        let all: Vec<&ReplicaSet> = new_rs.into_iter().chain(old).collect();
        let sum = |f: fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> i32| -> i32 {
            all.iter().map(|rs| status_of(rs, f)).sum()
        };
        let total = sum(|s| s.replicas);
        let ready = sum(|s| s.ready_replicas.unwrap_or(0));
        let avail = sum(|s| s.available_replicas.unwrap_or(0));
        let updated = new_rs.map_or(0, |rs| status_of(rs, |s| s.replicas));
        let ru = serde_json::to_value(
            spec.strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref()),
        )
        .unwrap_or_default();
        let max_unavailable =
            if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
                0
            } else {
                scaled(ru.get("maxUnavailable"), want, false, 0)
            };
        let is_available = avail >= want - max_unavailable;
        let complete = updated == want && total == want && avail >= want;
        let now = crate::registry::now();
        let cur = serde_json::to_value(&d.status).unwrap_or_default();
        let condition = |ty: &str, status: bool, reason: &str, message: String| {
            let s = if status { "True" } else { "False" };
            let old = cur["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == ty);
            let since = old
                .filter(|c| c["status"] == s)
                .map_or(json!(now), |c| c["lastTransitionTime"].clone());
            json!({"type": ty, "status": s, "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": since})
        };
        let rs_name = new_rs
            .and_then(|rs| rs.metadata.name.clone())
            .unwrap_or_default();
        let conditions = vec![
            if is_available {
                condition(
                    "Available",
                    true,
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".into(),
                )
            } else {
                condition(
                    "Available",
                    false,
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".into(),
                )
            },
            if complete {
                condition(
                    "Progressing",
                    true,
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                )
            } else {
                condition(
                    "Progressing",
                    true,
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                )
            },
        ];
        let status = json!({
            "observedGeneration": d.metadata.generation,
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": avail, "unavailableReplicas": (want - avail).max(0),
        });
        let reasons = |v: &Value| -> Vec<(Value, Value, Value)> {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                .collect()
        };
        let differs = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| cur[k].as_i64().unwrap_or(0) != v.as_i64().unwrap_or(0))
            || reasons(&cur["conditions"]) != reasons(&json!(conditions));
        if differs {
            let mut status = status;
            status["conditions"] = json!(conditions);
            let name = d.metadata.name.as_deref().unwrap_or_default();
            let _ = self.client.patch_status::<Deployment>(
                d.metadata.namespace.as_deref(),
                name,
                &json!({"status": status}),
            );
        }
    }
}
