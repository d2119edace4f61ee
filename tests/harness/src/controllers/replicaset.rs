//! The ReplicaSet controller: keeps `spec.replicas` active pods stamped from the
//! template (deleting the least useful first on scale-down) and reports status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::events::Recorder;
use super::workload::{
    controlled_by, controller_ref, is_active, is_available, is_ready, pod_from_template,
};
use crate::client::Client;

pub struct ReplicaSetController {
    client: Client,
    events: Recorder,
}

/// Deletion order on scale-down, as upstream ranks pods: unscheduled before
/// scheduled, not ready before ready, newer before older.
fn deletion_rank(p: &Pod) -> (bool, bool, std::cmp::Reverse<String>) {
    let scheduled = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let created = serde_json::to_value(&p.metadata.creation_timestamp)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    (scheduled, is_ready(p), std::cmp::Reverse(created))
}

impl ReplicaSetController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "replicaset-controller", None);
        ReplicaSetController { client, events }
    }

    pub fn reconcile(&self) {
        for rs in self.client.list::<ReplicaSet>(None) {
            if rs.metadata.deletion_timestamp.is_none() {
                self.sync(&rs);
            }
        }
    }

    fn sync(&self, rs: &ReplicaSet) {
        let ns = rs.metadata.namespace.clone();
        let name = rs.metadata.name.clone().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        let mut active: Vec<Pod> = self
            .client
            .list::<Pod>(ns.as_deref())
            .into_iter()
            .filter(|p| controlled_by(&p.metadata, rs.metadata.uid.as_ref()) && is_active(p))
            .collect();
        if active.len() < want {
            let template = spec.template.clone().unwrap_or_default();
            for _ in active.len()..want {
                let pod = pod_from_template(
                    &template,
                    ns.clone(),
                    &name,
                    controller_ref("ReplicaSet", &rs.metadata),
                    BTreeMap::new(),
                );
                match self.client.create(&pod) {
                    Ok(p) => {
                        let pname = p.metadata.name.clone().unwrap_or_default();
                        tracing::info!(replicaset = %name, pod = %pname, "pod created");
                        self.events.record_typed(
                            rs,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pname}"),
                        );
                        active.push(p);
                    }
                    Err(e) => {
                        self.events.record_typed(
                            rs,
                            "Warning",
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        );
                        break;
                    }
                }
            }
        } else if active.len() > want {
            active.sort_by_key(deletion_rank);
            for p in active.drain(..active.len() - want).collect::<Vec<_>>() {
                let pname = p.metadata.name.clone().unwrap_or_default();
                if self
                    .client
                    .delete::<Pod>(ns.as_deref(), &pname, None)
                    .is_ok()
                {
                    tracing::info!(replicaset = %name, pod = %pname, "pod deleted");
                    self.events.record_typed(
                        rs,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {pname}"),
                    );
                }
            }
        }
        self.update_status(rs, &active);
    }

    fn update_status(&self, rs: &ReplicaSet, active: &[Pod]) {
        let spec = rs.spec.clone().unwrap_or_default();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let want = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let labelled = |p: &Pod| {
            let have = p.metadata.labels.clone().unwrap_or_default();
            want.iter().all(|(k, v)| have.get(k) == Some(v))
        };
        let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
        let status = json!({
            "observedGeneration": rs.metadata.generation,
            "replicas": active.len() as i32,
            "fullyLabeledReplicas": count(&labelled),
            "readyReplicas": count(&is_ready),
            "availableReplicas": count(&|p| is_available(p, min_ready)),
        });
        let cur = serde_json::to_value(&rs.status).unwrap_or_default();
        let differs = [
            "observedGeneration",
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
        ]
        .iter()
        .any(|k| cur[*k].as_i64().unwrap_or(0) != status[*k].as_i64().unwrap_or(0));
        if differs {
            let name = rs.metadata.name.as_deref().unwrap_or_default();
            let _ = self.client.patch_status::<ReplicaSet>(
                rs.metadata.namespace.as_deref(),
                name,
                &json!({"status": status}),
            );
        }
    }
}
