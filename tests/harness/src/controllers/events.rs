//! Event recording: core/v1 Events for what a user sees in `kubectl describe`,
//! aggregated by (object, reason, message) with a count, as client-go does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::client::Client;
use crate::registry::patch::PatchType;
use crate::registry::{Sub, WriteOptions, now};
use crate::resources;

/// Last emission per event key: (reason, message, count, when).
type Seen = HashMap<String, (String, String, i64, std::time::Instant)>;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Self {
        Recorder {
            client,
            component: component.into(),
            host: host.map(String::from),
            seen: Default::default(),
        }
    }

    /// Records an event about `obj` (any object with kind, apiVersion and metadata).
    pub fn record(&self, obj: &Value, ty: &str, reason: &str, message: &str) {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
        let name = meta["name"].as_str().unwrap_or_default();
        let involved = json!({"kind": obj["kind"], "apiVersion": obj["apiVersion"], "name": name,
            "namespace": meta["namespace"], "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]});
        let key = format!(
            "{}/{}/{}/{reason}/{message}",
            ns,
            name,
            meta["uid"].as_str().unwrap_or_default()
        );
        let reg = self.client.registry();
        let ts = now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ens, ename, count, at)) = seen.get_mut(&key) {
            // Repeats within a minute are folded away, as client-go's spam filter does.
            if at.elapsed() < std::time::Duration::from_secs(60) {
                return;
            }
            *at = std::time::Instant::now();
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": ts});
            let r = reg.patch(
                &resources::EVENTS,
                Some(ens.as_str()),
                ename,
                PatchType::Merge,
                &patch,
                Sub::Main,
                WriteOptions::default(),
            );
            if r.is_ok() {
                return;
            }
        }
        let ev_name = format!(
            "{name}.{:x}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let mut source = json!({"component": self.component});
        if let Some(h) = &self.host {
            source["host"] = json!(h);
        }
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": ev_name, "namespace": ns},
            "involvedObject": involved, "reason": reason, "message": message, "type": ty,
            "source": source, "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.host.clone().unwrap_or_default(),
            "eventTime": null,
        });
        match reg.create(&resources::EVENTS, Some(&ns), ev, WriteOptions::default()) {
            Ok(_) => {
                seen.insert(key, (ns, ev_name, 1, std::time::Instant::now()));
            }
            Err(e) => tracing::debug!(error = %e, reason, "event not recorded"),
        }
        tracing::info!(component = %self.component, object = %format!("{}/{}", obj["kind"].as_str().unwrap_or_default(), name), reason, message, "event");
    }

    /// Records an event about a typed object.
    pub fn record_typed<K: serde::Serialize>(
        &self,
        obj: &K,
        ty: &str,
        reason: &str,
        message: &str,
    ) {
        if let Ok(v) = serde_json::to_value(obj) {
            self.record(&v, ty, reason, message);
        }
    }
}
