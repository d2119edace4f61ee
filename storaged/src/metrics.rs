//! Prometheus metrics of a storaged node: block I/O by operation and outcome (counted on the
//! node that serves it, the group's leader), each hosted Raft group's state, and `/metrics`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IoLabels {
    /// read, write, discard or flush.
    pub op: &'static str,
    /// `ok`, `not_leader` (redirected; the leader serves it) or the gRPC code's name.
    /// Borrowed on the hot path: recording a served I/O allocates nothing.
    pub result: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The volume's name; `meta` for the catalogue group.
    pub volume: String,
    pub group: u64,
}

fn io_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric of the process, registered once.
pub struct Metrics {
    registry: Registry,
    io_seconds: Family<IoLabels, Histogram>,
    io_bytes: Family<OpLabels, Counter>,
    is_leader: Family<GroupLabels, Gauge>,
    term: Family<GroupLabels, Gauge>,
    last_log_index: Family<GroupLabels, Gauge>,
    applied_index: Family<GroupLabels, Gauge>,
    purged_index: Family<GroupLabels, Gauge>,
    quiet: Family<GroupLabels, Gauge>,
    volume_health: Family<GroupLabels, Gauge>,
    rebuild_bytes: Counter,
    rebuild_remaining: Family<GroupLabels, Gauge>,
    group_open_failed: Family<GroupLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn_storaged");
        let io_seconds =
            Family::<IoLabels, Histogram>::new_with_constructor(io_histogram as fn() -> Histogram);
        let io_bytes = Family::<OpLabels, Counter>::default();
        registry.register(
            "io_seconds",
            "Block I/O served by this node, by operation and result",
            io_seconds.clone(),
        );
        registry.register(
            "io_bytes",
            "Bytes read, written or discarded successfully by this node",
            io_bytes.clone(),
        );
        let group = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<GroupLabels, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let is_leader = group(
            &mut registry,
            "raft_leader",
            "1 if this node leads the Raft group",
        );
        let term = group(&mut registry, "raft_term", "The Raft group's current term");
        let last_log_index = group(
            &mut registry,
            "raft_last_log_index",
            "The last log index on this node",
        );
        let applied_index = group(
            &mut registry,
            "raft_applied_index",
            "The last log index applied on this node",
        );
        let purged_index = group(
            &mut registry,
            "raft_purged_index",
            "The last log index purged on this node (its effect is in a snapshot)",
        );
        let quiet = group(
            &mut registry,
            "raft_quiet",
            "1 if the Raft group is quiet here: its timers stopped until its next message or I/O",
        );
        let volume_health = group(
            &mut registry,
            "volume_health",
            "On the volume group's leader: 1 healthy, 2 degraded (VolumeHealth in the API)",
        );
        let rebuild_bytes = Counter::default();
        registry.register(
            "rebuild_bytes",
            "Bytes of volume snapshots received: replicas rebuilt or caught up from a stream",
            rebuild_bytes.clone(),
        );
        let rebuild_remaining = group(
            &mut registry,
            "rebuild_remaining_bytes",
            "Bytes of a volume snapshot this node is sending still to go (estimated), per volume",
        );
        let group_open_failed = group(
            &mut registry,
            "group_open_failed",
            "1 for each volume group placed here that failed to open (retried with backoff; \
             the reason is in the log and in GetVolume)",
        );
        Metrics {
            group_open_failed,
            rebuild_remaining,
            quiet,
            volume_health,
            rebuild_bytes,
            registry,
            io_seconds,
            io_bytes,
            is_leader,
            term,
            last_log_index,
            applied_index,
            purged_index,
        }
    }
}

impl Metrics {
    /// Records one block operation that started at `started`.
    pub fn io<T>(&self, op: &'static str, bytes: u64, started: Instant, r: &Result<T>) {
        let result = match r {
            Ok(_) => {
                self.io_bytes.get_or_create(&OpLabels { op }).inc_by(bytes);
                Cow::Borrowed("ok")
            }
            Err(Error::NotLeader { .. }) => Cow::Borrowed("not_leader"),
            Err(e) => Cow::Owned(format!("{:?}", e.code())),
        };
        self.io_seconds
            .get_or_create(&IoLabels { op, result })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts `bytes` of a snapshot stream received for a replica.
    pub fn rebuild_received(&self, bytes: u64) {
        self.rebuild_bytes.inc_by(bytes);
    }

    /// The text exposition, with the group gauges set from `groups` (read just now) and
    /// the bytes of outgoing rebuilds still to send by group (`remaining`) and the groups
    /// that failed to open here (`failed`: group, volume name).
    pub fn encode(
        &self,
        groups: &[GroupSample],
        remaining: &BTreeMap<u64, u64>,
        failed: &[(u64, String)],
    ) -> String {
        let families = [
            &self.is_leader,
            &self.term,
            &self.last_log_index,
            &self.applied_index,
            &self.purged_index,
            &self.quiet,
            &self.volume_health,
            &self.rebuild_remaining,
            &self.group_open_failed,
        ];
        // Groups come and go: start from nothing so a removed group's series disappear.
        for f in families {
            f.clear();
        }
        for g in groups {
            let labels = GroupLabels {
                volume: g.volume.clone(),
                group: g.group,
            };
            let set = |f: &Family<GroupLabels, Gauge>, v: u64| {
                f.get_or_create(&labels).set(v as i64);
            };
            set(&self.is_leader, u64::from(g.leader));
            set(&self.term, g.term);
            set(&self.last_log_index, g.last_log_index);
            set(&self.applied_index, g.applied_index);
            set(&self.purged_index, g.purged_index);
            set(&self.quiet, u64::from(g.quiet));
            if let Some(h) = g.health {
                set(&self.volume_health, h as u64);
            }
            if let Some(r) = remaining.get(&g.group) {
                set(&self.rebuild_remaining, *r);
            }
        }
        for (group, volume) in failed {
            let labels = GroupLabels {
                volume: volume.clone(),
                group: *group,
            };
            self.group_open_failed.get_or_create(&labels).set(1);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One hosted group's Raft state, as the gauges show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSample {
    /// The volume's name; `meta` for the catalogue group.
    pub volume: String,
    pub group: u64,
    /// Whether this node leads the group.
    pub leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub purged_index: u64,
    /// Whether the group is quiet here (`node::quiesce`).
    pub quiet: bool,
    /// On a volume group's leader, the volume's health.
    pub health: Option<cairn_proto::cairn::v1::VolumeHealth>,
}

/// What the endpoint serves: the exposition of a node's metrics, read when scraped.
pub trait Exposition: Send + Sync + 'static {
    fn exposition(&self) -> String;
}

/// `/metrics` (Prometheus text exposition) and `/healthz`.
pub fn router(node: Arc<impl Exposition>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let node = node.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        node.exposition(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` and serves the metrics endpoint in the background; returns the bound address.
pub async fn serve(addr: SocketAddr, node: Arc<impl Exposition>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {addr} for metrics: {e}")))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(node)).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "serving metrics");
    Ok(local)
}
