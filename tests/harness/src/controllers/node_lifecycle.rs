//! The node lifecycle controller (kube-controller-manager's node-lifecycle and taint-eviction
//! controllers): a node whose kubelet stops posting goes Unknown, tainted, its pods unready, evicted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::Client;
use crate::registry::{now, set_condition};
use crate::resources;

/// The taint of a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// What the DefaultTolerationSeconds admission plugin gives a pod that does not tolerate
/// `NOT_READY`/`UNREACHABLE` NoExecute itself (the harness API server does not add it).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// `node-monitor-grace-period` upstream.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions a kubelet posts, all set Unknown when it stops.
const KUBELET_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// When this controller last saw a node's kubelet post (Lease renewal or Ready heartbeat),
/// by this process's clock (as upstream: no trust in the kubelet's clock).
struct Health {
    seen: (Option<String>, Option<String>),
    probe: Instant,
    /// The node's pods were marked not ready since its Ready status left True (upstream
    /// marks them on that transition, and again only while a mark failed).
    pods_marked: bool,
}

pub struct NodeLifecycleController {
    client: Client,
    grace: Duration,
    health: HashMap<String, Health>,
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// The taints this controller owns for a Ready status: none when True.
fn wanted_taints(ready: Option<&str>) -> Option<&'static str> {
    match ready {
        Some("False") => Some(NOT_READY),
        Some("Unknown") => Some(UNREACHABLE),
        _ => None,
    }
}

/// Whether `toleration` tolerates `taint` (key, operator Exists/Equal, value, effect).
fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = toleration["effect"].as_str().unwrap_or_default();
    if !effect.is_empty() && taint["effect"] != effect {
        return false;
    }
    let key = toleration["key"].as_str().unwrap_or_default();
    if !key.is_empty() && taint["key"] != key {
        return false;
    }
    match toleration["operator"].as_str().unwrap_or("Equal") {
        "Exists" => true,
        _ => {
            key.is_empty()
                || toleration["value"].as_str().unwrap_or_default()
                    == taint["value"].as_str().unwrap_or_default()
        }
    }
}

/// How long `pod` tolerates the NoExecute `taint`: None forever, Some(0) not at all. A pod
/// without a toleration of its own for the not-ready/unreachable taints gets the admission
/// default (`DEFAULT_TOLERATION_SECONDS`).
fn tolerated_for(pod: &Value, taint: &Value) -> Option<i64> {
    let matching: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| tolerates(t, taint))
        .collect();
    if matching.is_empty() {
        let key = taint["key"].as_str().unwrap_or_default();
        return Some(if key == NOT_READY || key == UNREACHABLE {
            DEFAULT_TOLERATION_SECONDS
        } else {
            0
        });
    }
    // The shortest of the matching tolerations' bounds; one without a bound is forever.
    let bounds: Vec<i64> = matching
        .iter()
        .map_while(|t| t["tolerationSeconds"].as_i64())
        .collect();
    if bounds.len() < matching.len() {
        return None;
    }
    bounds.into_iter().min().map(|s| s.max(0))
}

/// Seconds since an RFC 3339 timestamp (0 when it does not parse).
fn seconds_since(ts: &Value) -> i64 {
    ts.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
}

impl NodeLifecycleController {
    /// `grace` is `node-monitor-grace-period`: how long a kubelet may go without posting.
    pub fn new(client: Client, grace: Duration) -> Self {
        NodeLifecycleController {
            client,
            grace,
            health: HashMap::new(),
        }
    }

    pub fn reconcile(&mut self) {
        let nodes = self.client.list_values(&resources::NODES);
        let leases = self.client.list_values(&resources::LEASES);
        let pods = self.client.list_values(&resources::PODS);
        self.health
            .retain(|n, _| nodes.iter().any(|x| x["metadata"]["name"] == n.as_str()));
        for node in &nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or_default();
            let renew = leases
                .iter()
                .find(|l| {
                    l["metadata"]["namespace"] == LEASE_NAMESPACE && l["metadata"]["name"] == name
                })
                .and_then(|l| l["spec"]["renewTime"].as_str().map(String::from));
            let ready = ready_condition(node);
            let heartbeat = ready.and_then(|c| c["lastHeartbeatTime"].as_str().map(String::from));
            let seen = (renew, heartbeat);
            let h = self.health.entry(name.to_string()).or_insert(Health {
                seen: seen.clone(),
                probe: Instant::now(),
                pods_marked: false,
            });
            if h.seen != seen {
                h.seen = seen;
                h.probe = Instant::now();
            }
            let mut status = ready.and_then(|c| c["status"].as_str()).map(String::from);
            if h.probe.elapsed() > self.grace && status.as_deref() != Some("Unknown") {
                self.mark_unknown(node);
                status = Some("Unknown".into());
            }
            let lost = matches!(status.as_deref(), Some("False" | "Unknown"));
            let mark = self.health.get_mut(name).is_some_and(|h| {
                let first = lost && !h.pods_marked;
                h.pods_marked = lost;
                first
            });
            let taints = self.taint(node, status.as_deref());
            let on_node: Vec<&Value> = pods
                .iter()
                .filter(|p| p["spec"]["nodeName"] == name)
                .collect();
            // Once per transition, as upstream: a kubelet that is back and posts its pods'
            // status again is not overwritten from a view of the node taken before.
            if mark
                && !self.mark_pods_not_ready(name, &on_node)
                && let Some(h) = self.health.get_mut(name)
            {
                h.pods_marked = false;
            }
            self.evict(name, &taints, &on_node);
        }
    }

    /// The kubelet's conditions Unknown, reason NodeStatusUnknown, heartbeats kept.
    fn mark_unknown(&self, node: &Value) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let ts = now();
        let posted = ready_condition(node).is_some();
        let message = if posted {
            "Kubelet stopped posting node status."
        } else {
            "Kubelet never posted node status."
        };
        let mut conds: Vec<Value> = node["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for ty in KUBELET_CONDITIONS {
            let heartbeat = node["metadata"]["creationTimestamp"].clone();
            let c = match conds.iter_mut().find(|c| c["type"] == ty) {
                Some(c) => c,
                None => {
                    conds.push(json!({"type": ty, "lastHeartbeatTime": heartbeat}));
                    conds.last_mut().expect("pushed")
                }
            };
            if c["status"] != "Unknown" {
                c["lastTransitionTime"] = json!(ts);
            }
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!(message);
        }
        let patch = json!({"status": {"conditions": conds}});
        match self
            .client
            .patch_status::<k8s_openapi::api::core::v1::Node>(None, name, &patch)
        {
            Ok(_) => tracing::warn!(
                node = name,
                grace_secs = self.grace.as_secs_f64(),
                "node status unknown: kubelet stopped posting"
            ),
            Err(e) => tracing::warn!(node = name, error = %e, "marking the node unknown failed"),
        }
    }

    /// Puts the not-ready/unreachable taints (NoSchedule and NoExecute) the Ready status asks
    /// for and removes the others; returns the node's taints afterwards.
    fn taint(&self, node: &Value, ready: Option<&str>) -> Vec<Value> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let current: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let want = wanted_taints(ready);
        let mine = |t: &Value| t["key"] == NOT_READY || t["key"] == UNREACHABLE;
        let mut taints: Vec<Value> = current
            .iter()
            .filter(|t| !mine(t) || Some(t["key"].as_str().unwrap_or_default()) == want)
            .cloned()
            .collect();
        if let Some(key) = want {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints
                    .iter()
                    .any(|t| t["key"] == key && t["effect"] == effect)
                {
                    let mut t = json!({"key": key, "effect": effect});
                    if effect == "NoExecute" {
                        t["timeAdded"] = json!(now());
                    }
                    taints.push(t);
                }
            }
        }
        if taints == current {
            return taints;
        }
        let patch = json!({"spec": {"taints": if taints.is_empty() { Value::Null } else { json!(taints) }}});
        match self
            .client
            .patch::<k8s_openapi::api::core::v1::Node>(None, name, &patch)
        {
            Ok(_) => tracing::info!(
                node = name,
                taint = want.unwrap_or("none"),
                "node taints updated"
            ),
            Err(e) => tracing::warn!(node = name, error = %e, "updating the node's taints failed"),
        }
        taints
    }

    /// Upstream's MarkPodsNotReady: each pod's Ready condition False; whether every write landed.
    fn mark_pods_not_ready(&self, node: &str, pods: &[&Value]) -> bool {
        let mut all = true;
        for pod in pods {
            let ready = pod["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            if ready.is_none_or(|c| c["status"] == "False") {
                continue;
            }
            let mut p = (*pod).clone();
            set_condition(&mut p, "Ready", "False", None, None);
            let (ns, name) = (
                pod["metadata"]["namespace"].as_str(),
                pod["metadata"]["name"].as_str().unwrap_or_default(),
            );
            let patch = json!({"status": {"conditions": p["status"]["conditions"]}});
            match self
                .client
                .patch_status::<k8s_openapi::api::core::v1::Pod>(ns, name, &patch)
            {
                Ok(_) => tracing::info!(
                    node,
                    pod = name,
                    namespace = ns,
                    "pod marked not ready: its node is not ready"
                ),
                Err(e) => {
                    all = false;
                    tracing::warn!(node, pod = name, error = %e, "marking the pod not ready failed")
                }
            }
        }
        all
    }

    /// The taint-eviction controller: deletes a pod once a NoExecute taint of its node has been
    /// there longer than the pod tolerates it.
    fn evict(&self, node: &str, taints: &[Value], pods: &[&Value]) {
        let no_execute: Vec<&Value> = taints
            .iter()
            .filter(|t| t["effect"] == "NoExecute")
            .collect();
        if no_execute.is_empty() {
            return;
        }
        for pod in pods {
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let due = no_execute.iter().find(|t| {
                tolerated_for(pod, t).is_some_and(|secs| seconds_since(&t["timeAdded"]) >= secs)
            });
            let Some(taint) = due else { continue };
            let (ns, name) = (
                pod["metadata"]["namespace"].as_str(),
                pod["metadata"]["name"].as_str().unwrap_or_default(),
            );
            let mut p = (*pod).clone();
            set_condition(
                &mut p,
                "DisruptionTarget",
                "True",
                Some("DeletionByTaintManager"),
                Some("Taint manager: deleting due to NoExecute taint"),
            );
            let patch = json!({"status": {"conditions": p["status"]["conditions"]}});
            let _ = self
                .client
                .patch_status::<k8s_openapi::api::core::v1::Pod>(ns, name, &patch);
            match self
                .client
                .delete::<k8s_openapi::api::core::v1::Pod>(ns, name, None)
            {
                Ok(()) => {
                    tracing::warn!(node, pod = name, namespace = ns, taint = %taint["key"], "pod evicted: NoExecute taint not tolerated")
                }
                Err(e) => tracing::warn!(node, pod = name, error = %e, "evicting the pod failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Value {
        json!({"key": key, "effect": "NoExecute", "timeAdded": now()})
    }

    #[test]
    fn tolerations_bound_the_eviction() {
        let none = json!({"spec": {}});
        assert_eq!(tolerated_for(&none, &taint(UNREACHABLE)), Some(300));
        assert_eq!(tolerated_for(&none, &taint("other")), Some(0));
        let bounded = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        assert_eq!(tolerated_for(&bounded, &taint(UNREACHABLE)), Some(5));
        assert_eq!(tolerated_for(&bounded, &taint(NOT_READY)), Some(300));
        let forever = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        assert_eq!(tolerated_for(&forever, &taint(UNREACHABLE)), None);
        let wrong_effect = json!({"spec": {"tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"}]}});
        assert_eq!(tolerated_for(&wrong_effect, &taint(UNREACHABLE)), Some(300));
    }

    #[test]
    fn ready_status_picks_the_taint() {
        assert_eq!(wanted_taints(Some("True")), None);
        assert_eq!(wanted_taints(Some("False")), Some(NOT_READY));
        assert_eq!(wanted_taints(Some("Unknown")), Some(UNREACHABLE));
    }
}
