//! The kubelet's status manager reconcile: whether the API server's copy of a pod's status
//! still says what the kubelet last computed (phase, conditions, containers), and how often it checks.

use std::time::Duration;

use serde_json::{Value, json};

/// How often a pod worker compares the API server's copy of its status with its own and
/// writes it again when they differ or the last write failed (upstream's status manager
/// syncs every 10 s).
pub const STATUS_SYNC: Duration = Duration::from_secs(10);

/// What the kubelet owns in a status, without what a round trip may reshape (timestamps of
/// conditions, nulls): the phase, each condition's status, each container's state.
fn essentials(status: &Value) -> Value {
    let mut conditions: Vec<(String, String)> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    conditions.sort();
    let containers: Vec<Value> = status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let state = c["state"].as_object();
            json!({
                "name": c["name"],
                "ready": c["ready"].as_bool().unwrap_or(false),
                "started": c["started"].as_bool().unwrap_or(false),
                "restartCount": c["restartCount"].as_i64().unwrap_or(0),
                "state": state.and_then(|s| s.keys().next().cloned()),
                "startedAt": c["state"]["running"]["startedAt"],
            })
        })
        .collect();
    json!({"phase": status["phase"], "conditions": conditions, "containerStatuses": containers})
}

/// Whether the API server's status (`api`) differs from the kubelet's (`ours`) in what the
/// kubelet owns: another writer changed it (the node lifecycle controller marks the pods of a
/// node it lost not ready), or the kubelet's last write did not land.
pub fn disagrees(api: &Value, ours: &Value) -> bool {
    essentials(api) != essentials(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: &str, started_at: &str) -> Value {
        json!({"phase": "Running",
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": "2026-01-01T00:00:00Z", "lastProbeTime": null},
                {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": ready == "True", "started": true,
                "restartCount": 0, "containerID": null, "state": {"running": {"startedAt": started_at}}}]})
    }

    #[test]
    fn only_what_the_kubelet_owns_is_compared() {
        let ours = status("True", "2026-01-01T00:00:05Z");
        // A round trip drops nulls and may move condition times: no difference.
        let mut api = ours.clone();
        api["conditions"][0]
            .as_object_mut()
            .unwrap()
            .remove("lastProbeTime");
        api["conditions"][0]["lastTransitionTime"] = json!("2026-01-01T00:00:09Z");
        api["containerStatuses"][0]
            .as_object_mut()
            .unwrap()
            .remove("containerID");
        api["hostIP"] = json!("10.0.0.1");
        assert!(!disagrees(&api, &ours));
        // The node lifecycle controller marked the pod not ready: a difference.
        let mut marked = api.clone();
        marked["conditions"][0]["status"] = json!("False");
        assert!(disagrees(&marked, &ours));
        // The copy of a container that ran before (a restarted node's old status).
        assert!(disagrees(&status("True", "2026-01-01T00:00:01Z"), &ours));
        assert!(disagrees(&Value::Null, &ours));
    }
}
