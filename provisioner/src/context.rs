//! What every controller shares: the API client, the CSI client, the Event recorder,
//! metrics, the capacity refresh trigger, and per-object exponential backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Notify;

use crate::csi::CsiClient;
use crate::error::{Error, backoff};
use crate::metrics::Metrics;

/// The shared controller context.
pub struct Ctx {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// The CSI controller endpoint.
    pub csi: CsiClient,
    /// Publishes events.k8s.io/v1 Events.
    pub recorder: Recorder,
    /// Process metrics.
    pub metrics: Metrics,
    /// Notified after a volume is created or deleted, so capacity is republished.
    pub capacity_trigger: Arc<Notify>,
    /// Written into PV volumeAttributes (`storage.kubernetes.io/csiProvisionerIdentity`).
    pub provisioner_identity: String,
    failures: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    /// Builds a context; `instance` names this replica in Events (the pod name).
    pub fn new(
        client: kube::Client,
        csi: CsiClient,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "cairn-provisioner".into(),
            instance,
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Ctx {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            csi,
            metrics,
            capacity_trigger: Arc::new(Notify::new()),
            provisioner_identity: format!(
                "{now_ms}-{}-{}",
                std::process::id() % 10000,
                crate::names::DRIVER
            ),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event; a failure to publish is logged, never fatal.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(truncate(note, 1000)),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// A Warning Event.
    pub async fn warn(&self, reference: &ObjectReference, reason: &str, note: String) {
        self.event(reference, EventType::Warning, reason, note)
            .await;
    }

    /// A Normal Event.
    pub async fn normal(&self, reference: &ObjectReference, reason: &str, note: String) {
        self.event(reference, EventType::Normal, reason, note).await;
    }

    /// Records a reconcile result: resets the object's backoff on success, counts metrics.
    pub fn finished(&self, controller: &str, key: &str, result: &Result<Action, Error>) {
        match result {
            Ok(_) => {
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                self.metrics.reconciled(controller, "ok");
            }
            Err(e) => self.metrics.reconciled(controller, e.kind()),
        }
    }

    /// The requeue after a failed reconcile: exponential per object, 1s to 5 min.
    pub fn retry(&self, key: &str) -> Action {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        let delay = backoff(*n);
        *n = n.saturating_add(1);
        Action::requeue(delay)
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// An object's key for backoff bookkeeping.
pub fn key(kind: &str, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}
