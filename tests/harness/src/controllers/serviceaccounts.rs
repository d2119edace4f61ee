//! The ServiceAccount controller (a `default` ServiceAccount in every active namespace)
//! and the `kubernetes` Service in `default`, which kube-apiserver keeps in being.

use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use serde_json::json;

use crate::client::Client;

/// The `kubernetes` Service's ClusterIP: the first of upstream's default service range.
/// The service proxy routes it to the API server's HTTPS listener (decision 061).
pub const KUBERNETES_CLUSTER_IP: &str = "10.96.0.1";

pub struct ServiceAccountController {
    client: Client,
    /// The API server's HTTPS port, the `kubernetes` Service's targetPort (none: no Service).
    https_port: Option<u16>,
}

impl ServiceAccountController {
    pub fn new(client: Client, https_port: Option<u16>) -> Self {
        ServiceAccountController { client, https_port }
    }

    pub fn reconcile(&self) {
        for ns in self.client.list::<Namespace>(None) {
            let terminating = ns.metadata.deletion_timestamp.is_some()
                || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
            let Some(name) = ns.metadata.name.as_deref().filter(|_| !terminating) else {
                continue;
            };
            if matches!(
                self.client.get::<ServiceAccount>(Some(name), "default"),
                Ok(None)
            ) {
                let sa = ServiceAccount {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some("default".into()),
                        namespace: Some(name.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                self.create(&sa, name, "ServiceAccount");
            }
        }
        if let Some(port) = self.https_port
            && matches!(
                self.client.get::<Service>(Some("default"), "kubernetes"),
                Ok(None)
            )
        {
            let svc = json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_CLUSTER_IP,
                    "sessionAffinity": "None",
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
            });
            match serde_json::from_value::<Service>(svc) {
                Ok(svc) => self.create(&svc, "default", "Service"),
                Err(e) => tracing::warn!(error = %e, "kubernetes Service not built"),
            }
        }
    }

    fn create<K: crate::client::Scoped>(&self, obj: &K, ns: &str, kind: &str) {
        match self.client.create(obj) {
            Ok(_) => tracing::debug!(namespace = %ns, kind, "created"),
            // The namespace went meanwhile, or another pass made it: the next pass sees.
            Err(e) if e.is_already_exists() || e.is_not_found() => {}
            Err(e) => tracing::warn!(namespace = %ns, kind, error = %e, "create failed"),
        }
    }
}
