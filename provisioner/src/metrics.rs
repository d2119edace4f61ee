//! Prometheus metrics: CSI call latency (named as the upstream sidecars name it),
//! reconcile outcomes per controller, and leadership.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `csi_sidecar_operations_seconds`, as csi-lib-utils spells them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CsiLabels {
    /// The CSI driver name.
    pub driver_name: String,
    /// The full gRPC method, e.g. `/csi.v1.Controller/CreateVolume`.
    pub method_name: String,
    /// `OK` or the gRPC code name.
    pub grpc_status_code: String,
}

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// provisioner, deleter, attacher, resizer, capacity, local.
    pub controller: String,
    /// `ok` or an error kind.
    pub result: String,
}

fn csi_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// All metrics of the process, registered once.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served at `/metrics`.
    pub registry: Arc<Registry>,
    /// CSI call latency by method and outcome.
    pub csi_ops: Family<CsiLabels, Histogram>,
    /// Reconciles by controller and outcome.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// 1 while this replica holds the Lease (or leader election is off).
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let csi_ops = Family::<CsiLabels, Histogram>::new_with_constructor(
            csi_histogram as fn() -> Histogram,
        );
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "csi_sidecar_operations_seconds",
            "Time taken by CSI operations, by method and gRPC status code",
            csi_ops.clone(),
        );
        registry.register(
            "cairn_provisioner_reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "cairn_provisioner_leader",
            "Whether this replica currently holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            csi_ops,
            reconciles,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one reconcile outcome.
    pub fn reconciled(&self, controller: &str, result: &str) {
        self.reconciles
            .get_or_create(&ReconcileLabels {
                controller: controller.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconcile_counter_and_leader_gauge() {
        let m = Metrics::default();
        m.reconciled("provisioner", "ok");
        m.leader.set(1);
        let text = m.encode();
        assert!(
            text.contains(
                "cairn_provisioner_reconciles_total{controller=\"provisioner\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("cairn_provisioner_leader 1"), "{text}");
    }
}
