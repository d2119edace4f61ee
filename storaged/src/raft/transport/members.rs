//! Which address a group dials a peer at: the one the group's current membership gives,
//! followed when a membership change moves the peer (a node back on a new address).

use std::sync::{Arc, OnceLock};

use openraft::async_runtime::WatchReceiver;
use openraft::metrics::RaftServerMetrics;
use openraft::type_config::alias::WatchReceiverOf;

use super::{NodeId, TypeConfig};

type ServerMetrics = WatchReceiverOf<TypeConfig, RaftServerMetrics<TypeConfig>>;

/// A group's membership as its Raft publishes it, shared by the group's connections.
/// Empty until the group's Raft exists (its network factory is made first); a connection
/// then keeps the address it was made with.
#[derive(Clone, Default)]
pub struct Members(Arc<OnceLock<ServerMetrics>>);

impl Members {
    /// Follows `metrics` (the group's `Raft::server_metrics`) from now on.
    pub fn follow(&self, metrics: ServerMetrics) {
        let _ = self.0.set(metrics);
    }

    /// Node `id`'s address in the current membership when it is not `dialled`.
    /// openraft keeps a peer's replication and heartbeat connections across a membership
    /// change that only gives it a new address: each call asks here first.
    pub fn moved(&self, id: NodeId, dialled: &str) -> Option<String> {
        let metrics = self.0.get()?;
        let m = metrics.borrow_watched();
        let node = m.membership_config.membership().get_node(&id)?;
        (node.addr != dialled).then(|| node.addr.clone())
    }
}
