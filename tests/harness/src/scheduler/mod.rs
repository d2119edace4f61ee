//! The scheduler: a pass over pending pods that filters and scores nodes,
//! prepares WaitForFirstConsumer claims, and binds once claims are Bound.

pub mod filters;
pub mod volume_binding;
pub mod volume_limits;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode, CSIStorageCapacity, StorageClass};
use serde_json::json;

use crate::client::Client;
use crate::controllers::events::Recorder;
use crate::pvutil::{ANN_BOUND_BY_CONTROLLER, ANN_SELECTED_NODE};
use volume_binding::{ClaimPlan, VolumeCtx};

/// The volume plan for each of a pod's claims on one node.
type Plans = Vec<(PersistentVolumeClaim, ClaimPlan)>;

pub const SCHEDULER_NAME: &str = "default-scheduler";

/// A decision waiting for its claims to be bound.
struct Assumed {
    node: String,
    /// Claims for which we wrote selected-node (a removal means: schedule again).
    provisioned: Vec<String>,
}

pub struct Scheduler {
    client: Client,
    events: Recorder,
    assumed: HashMap<String, Assumed>,
    /// This pass's CSINodes (per-driver volume limits).
    csinodes: Vec<CSINode>,
}

fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

impl Scheduler {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), SCHEDULER_NAME, None);
        Scheduler {
            client,
            events,
            assumed: HashMap::new(),
            csinodes: Vec::new(),
        }
    }

    pub fn reconcile(&mut self) {
        let mut pods = self.client.list::<Pod>(None);
        let nodes = self.client.list::<Node>(None);
        let pvs = self.client.list::<PersistentVolume>(None);
        let pvcs: BTreeMap<(String, String), PersistentVolumeClaim> = self
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
        let classes: BTreeMap<String, StorageClass> = self
            .client
            .list::<StorageClass>(None)
            .into_iter()
            .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
            .collect();
        let drivers = self.client.list::<CSIDriver>(None);
        let capacities = self.client.list::<CSIStorageCapacity>(None);
        self.csinodes = self.client.list::<CSINode>(None);
        let ctx = VolumeCtx {
            pvcs: &pvcs,
            pvs: &pvs,
            classes: &classes,
            drivers: &drivers,
            capacities: &capacities,
        };
        let live: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        self.assumed.retain(|uid, _| live.contains(uid));
        // Pods already waiting on claims count against their node's resources.
        for p in pods.iter_mut() {
            if let Some(a) = p.metadata.uid.as_ref().and_then(|u| self.assumed.get(u)) {
                p.spec.get_or_insert_with(Default::default).node_name = Some(a.node.clone());
            }
        }
        let pending: Vec<Pod> = pods
            .iter()
            .filter(|p| {
                let s = p.spec.as_ref();
                p.metadata.deletion_timestamp.is_none()
                    && s.and_then(|s| s.scheduler_name.as_deref())
                        .unwrap_or(SCHEDULER_NAME)
                        == SCHEDULER_NAME
                    && (s
                        .and_then(|s| s.node_name.as_deref())
                        .is_none_or(str::is_empty)
                        || p.metadata
                            .uid
                            .as_ref()
                            .is_some_and(|u| self.assumed.contains_key(u)))
            })
            .cloned()
            .collect();
        for pod in pending {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if self.assumed.contains_key(&uid) {
                self.finish(&pod, &uid, &ctx);
                continue;
            }
            self.schedule(&pod, &uid, &mut pods, &nodes, &ctx);
        }
    }

    fn schedule(
        &mut self,
        pod: &Pod,
        uid: &str,
        pods: &mut [Pod],
        nodes: &[Node],
        ctx: &VolumeCtx,
    ) {
        let claims = match volume_binding::pod_claims(pod, ctx) {
            Ok(c) => c,
            Err(reason) => {
                return self.unschedulable(
                    pod,
                    &format!("0/{} nodes are available: {reason}.", nodes.len()),
                );
            }
        };
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(i64, String, Plans)> = None;
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let verdict = filters::node_ready(node)
                .and_then(|_| filters::matches_node_selector(pod, node))
                .and_then(|_| filters::tolerates_taints(pod, node))
                .and_then(|_| filters::fits_resources(pod, node, pods))
                .and_then(|_| volume_limits::check(pod, node, pods, ctx, &self.csinodes))
                .and_then(|_| volume_binding::check_node(&claims, node, ctx));
            match verdict {
                Err(r) => *reasons.entry(r).or_default() += 1,
                Ok(plans) => {
                    let s = filters::score(pod, node, pods);
                    if best
                        .as_ref()
                        .is_none_or(|(bs, bn, _)| s > *bs || (s == *bs && name < *bn))
                    {
                        best = Some((s, name, plans));
                    }
                }
            }
        }
        let Some((score, node, plans)) = best else {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            return self.unschedulable(
                pod,
                &format!(
                    "0/{} nodes are available: {}.",
                    nodes.len(),
                    detail.join(", ")
                ),
            );
        };
        tracing::info!(pod = %pod_key(pod), node = %node, score, "node chosen");
        let mut provisioned = Vec::new();
        for (claim, plan) in &plans {
            let (ns, cname) = (
                claim.metadata.namespace.as_deref(),
                claim.metadata.name.clone().unwrap_or_default(),
            );
            let ok = match plan {
                ClaimPlan::StaticPv(pv) => {
                    let cref = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": cname,
                        "uid": claim.metadata.uid, "resourceVersion": claim.metadata.resource_version});
                    let patch = json!({"metadata": {"annotations": {ANN_BOUND_BY_CONTROLLER: "yes"}}, "spec": {"claimRef": cref}});
                    tracing::info!(pod = %pod_key(pod), pvc = %cname, pv = %pv, node = %node, "pre-binding static volume");
                    self.client
                        .patch::<PersistentVolume>(None, pv, &patch)
                        .is_ok()
                }
                ClaimPlan::Provision => {
                    provisioned.push(cname.clone());
                    let patch = json!({"metadata": {"annotations": {ANN_SELECTED_NODE: node}}});
                    tracing::info!(pod = %pod_key(pod), pvc = %cname, node = %node, "selected node for provisioning");
                    self.client
                        .patch::<PersistentVolumeClaim>(ns, &cname, &patch)
                        .is_ok()
                }
            };
            if !ok {
                return;
            }
        }
        if let Some(p) = pods
            .iter_mut()
            .find(|p| p.metadata.uid.as_deref() == Some(uid))
        {
            p.spec.get_or_insert_with(Default::default).node_name = Some(node.clone());
        }
        self.assumed
            .insert(uid.to_string(), Assumed { node, provisioned });
        self.finish(pod, uid, ctx);
    }

    /// Binds the pod once every claim is Bound; drops the decision if the
    /// provisioner removed selected-node (so the next pass picks again).
    fn finish(&mut self, pod: &Pod, uid: &str, ctx: &VolumeCtx) {
        let Some(a) = self.assumed.get(uid).map(|a| Assumed {
            node: a.node.clone(),
            provisioned: a.provisioned.clone(),
        }) else {
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let fresh = |name: &str| {
            self.client
                .get::<PersistentVolumeClaim>(Some(&ns), name)
                .ok()
                .flatten()
        };
        for cname in &a.provisioned {
            let sel = fresh(cname).and_then(|c| {
                c.metadata
                    .annotations
                    .and_then(|m| m.get(ANN_SELECTED_NODE).cloned())
            });
            let bound = fresh(cname)
                .and_then(|c| c.spec?.volume_name)
                .is_some_and(|v| !v.is_empty());
            if sel.as_deref() != Some(a.node.as_str()) && !bound {
                tracing::info!(pod = %pod_key(pod), pvc = %cname, node = %a.node, "selected-node removed; rescheduling");
                self.events.record_typed(pod, "Warning", "FailedScheduling", &format!(
                    "selected node \"{}\" was rejected by the provisioner for claim \"{cname}\"; rescheduling", a.node
                ));
                self.assumed.remove(uid);
                return;
            }
        }
        let claims = match volume_binding::pod_claims(pod, ctx) {
            Ok(c) => c,
            Err(_) => {
                self.assumed.remove(uid);
                return;
            }
        };
        let all_bound = claims.iter().all(|c| {
            let c = fresh(c.metadata.name.as_deref().unwrap_or_default());
            c.and_then(|c| c.status?.phase).as_deref() == Some("Bound")
        });
        if !all_bound {
            return;
        }
        let node = a.node.clone();
        let (pns, pname) = (ns.clone(), pod.metadata.name.clone().unwrap_or_default());
        match self.client.bind_pod(&pns, &pname, &node) {
            Ok(()) => {
                tracing::info!(pod = %pod_key(pod), node = %node, "bound");
                self.events.record_typed(
                    pod,
                    "Normal",
                    "Scheduled",
                    &format!("Successfully assigned {pns}/{pname} to {node}"),
                );
            }
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), node = %node, error = %e, "binding failed")
            }
        }
        self.assumed.remove(uid);
    }

    fn unschedulable(&self, pod: &Pod, message: &str) {
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled")
                    .and_then(|c| c.message.clone())
            });
        if current.as_deref() == Some(message) {
            return;
        }
        tracing::info!(pod = %pod_key(pod), reason = message, "unschedulable");
        let (ns, name) = (
            pod.metadata.namespace.as_deref(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let cond = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastProbeTime": null, "lastTransitionTime": crate::registry::now()});
        let _ =
            self.client
                .patch_status::<Pod>(ns, name, &json!({"status": {"conditions": [cond]}}));
        self.events
            .record_typed(pod, "Warning", "FailedScheduling", message);
    }
}
