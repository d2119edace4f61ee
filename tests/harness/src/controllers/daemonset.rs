//! The DaemonSet controller: one pod per node that its nodeSelector, node affinity and
//! taints admit (placed by the scheduler via node affinity), rolling updates, status.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use serde_json::json;

use super::events::Recorder;
use super::workload::{
    controlled_by, controller_ref, is_available, is_ready, is_terminal, pod_from_template, scaled,
    template_hash,
};
use crate::client::Client;
use crate::scheduler::filters;

pub const REVISION_LABEL: &str = "controller-revision-hash";

pub struct DaemonSetController {
    client: Client,
    events: Recorder,
}

/// The tolerations upstream adds to every daemon pod (and, on the host network,
/// network-unavailable), so that node conditions do not evict or block it.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    let mut out = vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        out.push(t("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    out
}

/// The node a daemon pod is for: where it runs, or its `metadata.name` node affinity.
fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn revision_of(p: &Pod) -> Option<&String> {
    p.metadata.labels.as_ref()?.get(REVISION_LABEL)
}

/// Upstream's `NodeShouldRunDaemonPod`: (should run, should continue running). A new
/// daemon pod goes only to a node whose selector, affinity and taints admit it; one already
/// there stays while the node's NoExecute taints are tolerated, so a node that went
/// NotReady or unreachable (NoSchedule taints too) keeps its daemon pods.
fn placement(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let spec = ds.spec.clone().unwrap_or_default();
    let mut probe = Pod {
        spec: spec.template.spec.clone(),
        ..Default::default()
    };
    let ps = probe.spec.get_or_insert_with(Default::default);
    let host_network = ps.host_network == Some(true);
    ps.tolerations
        .get_or_insert_with(Vec::new)
        .extend(daemon_tolerations(host_network));
    if filters::matches_node_selector(&probe, node).is_err() {
        return (false, false);
    }
    if filters::tolerates_taints(&probe, node).is_ok() {
        return (true, true);
    }
    let mut no_execute = node.clone();
    if let Some(taints) = no_execute.spec.as_mut().and_then(|s| s.taints.as_mut()) {
        taints.retain(|t| t.effect == "NoExecute");
    }
    (
        false,
        filters::tolerates_taints(&probe, &no_execute).is_ok(),
    )
}

impl DaemonSetController {
    pub fn new(client: Client) -> Self {
        let events = Recorder::new(client.clone(), "daemonset-controller", None);
        DaemonSetController { client, events }
    }

    pub fn reconcile(&self) {
        let nodes = self.client.list::<Node>(None);
        for ds in self.client.list::<DaemonSet>(None) {
            if ds.metadata.deletion_timestamp.is_none() {
                self.sync(&ds, &nodes);
            }
        }
    }

    /// The daemon pod for `node`, before the scheduler places it.
    fn pod_for(&self, ds: &DaemonSet, node: &str, hash: &str) -> Pod {
        let spec = ds.spec.clone().unwrap_or_default();
        let labels = BTreeMap::from([(REVISION_LABEL.to_string(), hash.to_string())]);
        let mut pod = pod_from_template(
            &spec.template,
            ds.metadata.namespace.clone(),
            ds.metadata.name.as_deref().unwrap_or_default(),
            controller_ref("DaemonSet", &ds.metadata),
            labels,
        );
        let ps = pod.spec.get_or_insert_with(Default::default);
        let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
        for t in daemon_tolerations(ps.host_network == Some(true)) {
            if !tolerations.contains(&t) {
                tolerations.push(t);
            }
        }
        // Upstream replaces the required node affinity with the node's name: the node
        // was already checked against it.
        let affinity = ps.affinity.get_or_insert_with(Affinity::default);
        let na = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        na.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: None,
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.to_string()]),
                }]),
            }],
        });
        pod
    }

    fn sync(&self, ds: &DaemonSet, nodes: &[Node]) {
        let ns = ds.metadata.namespace.clone();
        let name = ds.metadata.name.clone().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let hash = template_hash(&spec.template);
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
        for p in self.client.list::<Pod>(ns.as_deref()) {
            if controlled_by(&p.metadata, ds.metadata.uid.as_ref())
                && let Some(n) = target_node(&p)
            {
                by_node.entry(n).or_default().push(p);
            }
        }
        let (mut wanted, mut kept) = (BTreeSet::new(), BTreeSet::new());
        for n in nodes {
            let name = n.metadata.name.clone().unwrap_or_default();
            let (run, keep) = placement(ds, n);
            if run {
                wanted.insert(name.clone());
            }
            if keep {
                kept.insert(name);
            }
        }
        // Failed daemon pods are deleted (and so replaced); so are pods on nodes that
        // no longer keep one, and all but the oldest of duplicates.
        for (node, pods) in &by_node {
            let mut live: Vec<&Pod> = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            for p in live.iter().filter(|p| is_terminal(p)) {
                self.delete(ds, p, "failed");
            }
            live.retain(|p| !is_terminal(p));
            if !kept.contains(node) {
                for p in &live {
                    self.delete(ds, p, "node no longer selected");
                }
            } else if live.len() > 1 {
                live.sort_by_key(|p| {
                    serde_json::to_value(&p.metadata.creation_timestamp)
                        .unwrap_or_default()
                        .to_string()
                });
                for p in &live[1..] {
                    self.delete(ds, p, "duplicate");
                }
            }
        }
        for node in &wanted {
            let has = by_node
                .get(node)
                .is_some_and(|ps| ps.iter().any(|p| !is_terminal(p)));
            if !has {
                match self.client.create(&self.pod_for(ds, node, &hash)) {
                    Ok(p) => {
                        let pname = p.metadata.name.clone().unwrap_or_default();
                        tracing::info!(daemonset = %name, node = %node, pod = %pname, "pod created");
                        self.events.record_typed(
                            ds,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {pname}"),
                        );
                    }
                    Err(e) => self.events.record_typed(
                        ds,
                        "Warning",
                        "FailedCreate",
                        &format!("Error creating: {e}"),
                    ),
                }
            }
        }
        let current = |node: &String| -> Option<&Pod> {
            by_node
                .get(node)?
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none() && !is_terminal(p))
        };
        self.roll(ds, &wanted, &current, &hash, min_ready);
        let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
            wanted.iter().filter(|n| current(n).is_some_and(f)).count() as i32
        };
        let desired = wanted.len() as i32;
        let available = count(&|p| is_available(p, min_ready));
        let misscheduled = by_node
            .iter()
            .filter(|(n, ps)| !wanted.contains(*n) && ps.iter().any(|p| !is_terminal(p)))
            .count() as i32;
        let status = json!({
            "observedGeneration": ds.metadata.generation,
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": count(&|_| true),
            "numberMisscheduled": misscheduled,
            "numberReady": count(&is_ready),
            "numberAvailable": available,
            "numberUnavailable": desired - available,
            "updatedNumberScheduled": count(&|p| revision_of(p) == Some(&hash)),
        });
        let cur = serde_json::to_value(&ds.status).unwrap_or_default();
        let differs = status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| cur[k].as_i64().unwrap_or(0) != v.as_i64().unwrap_or(0));
        if differs {
            let _ = self.client.patch_status::<DaemonSet>(
                ns.as_deref(),
                &name,
                &json!({"status": status}),
            );
        }
    }

    /// RollingUpdate: replaces pods of an older template, unavailable ones at once and
    /// available ones while fewer than `maxUnavailable` daemon pods are unavailable.
    fn roll<'a>(
        &self,
        ds: &DaemonSet,
        wanted: &BTreeSet<String>,
        current: &dyn Fn(&String) -> Option<&'a Pod>,
        hash: &str,
        min_ready: i32,
    ) {
        let spec = ds.spec.clone().unwrap_or_default();
        let strategy = spec.update_strategy.unwrap_or_default();
        if strategy.type_.as_deref() == Some("OnDelete") {
            return;
        }
        let ru = serde_json::to_value(&strategy.rolling_update).unwrap_or_default();
        let mut max_unavailable = scaled(ru.get("maxUnavailable"), wanted.len() as i32, true, 1);
        if max_unavailable == 0 {
            max_unavailable = 1;
        }
        let mut unavailable = wanted
            .iter()
            .filter(|n| !current(n).is_some_and(|p| is_available(p, min_ready)))
            .count() as i32;
        for node in wanted {
            let Some(p) = current(node) else { continue };
            if revision_of(p).map(String::as_str) == Some(hash) {
                continue;
            }
            if !is_available(p, min_ready) {
                self.delete(ds, p, "outdated and unavailable");
            } else if unavailable < max_unavailable {
                self.delete(ds, p, "outdated");
                unavailable += 1;
            }
        }
    }

    fn delete(&self, ds: &DaemonSet, p: &Pod, why: &str) {
        let pname = p.metadata.name.clone().unwrap_or_default();
        if self
            .client
            .delete::<Pod>(p.metadata.namespace.as_deref(), &pname, None)
            .is_ok()
        {
            let name = ds.metadata.name.as_deref().unwrap_or_default();
            tracing::info!(daemonset = %name, pod = %pname, why, "pod deleted");
            self.events.record_typed(
                ds,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {pname}"),
            );
        }
    }
}
