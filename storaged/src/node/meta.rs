//! This node's access to the catalogue: proposals to the meta group, linearizable and
//! follower reads, and the not-leader answers (with the leader's address) of any group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use tokio::sync::watch;

use crate::meta::catalog::{Catalog, MetaCommand, MetaReply};
use crate::raft::ChannelCache;
use crate::raft::state_machine::Shared;
use crate::raft::{META_GROUP, Raft, Request, Response, TypeConfig};
use crate::{Error, Result};

/// How long a follower read waits for the meta leader's read index and for applying it.
const FOLLOWER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a catalogue read waits for a meta leader to be elected (an election takes
/// 300–600 ms, longer under load).
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// The share of openraft's leader lease (the election timeout, counted from when the last
/// message a quorum acknowledged was sent) within which a leader reads on its lease. A
/// follower refuses other candidates for a whole election timeout by its own clock after
/// hearing from the leader, so lease reads stay linearizable while no follower's clock runs
/// more than 1 / `LEASE_SHARE` times as fast as the leader's (decision 054).
pub const LEASE_SHARE: f64 = 0.5;

/// Whether `raft`'s leader lease is still within `LEASE_SHARE` of its length (`true`
/// when no quorum acknowledged anything yet: openraft's own check decides, and holds only
/// for a group of one voter).
fn lease_within_margin(raft: &Raft) -> bool {
    use openraft::Instant as _;
    let lease = Duration::from_millis(raft.config().election_timeout_max).mul_f64(LEASE_SHARE);
    let metrics = raft.metrics();
    let acked = metrics.borrow_watched().last_quorum_acked;
    acked.is_none_or(|at| at.elapsed() < lease)
}

/// The meta group as this node sees it.
pub struct Meta {
    me: u64,
    /// Initial meta voters: addresses known before the catalogue holds any node.
    initial: BTreeMap<u64, String>,
    raft: Raft,
    shared: Arc<Shared>,
    channels: ChannelCache,
    read_policy: super::ReadPolicy,
}

impl Meta {
    pub(super) fn new(
        me: u64,
        initial: BTreeMap<u64, String>,
        raft: Raft,
        shared: Arc<Shared>,
        channels: ChannelCache,
        read_policy: super::ReadPolicy,
    ) -> Self {
        Meta {
            me,
            initial,
            read_policy,
            raft,
            shared,
            channels,
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The local (possibly stale) catalogue.
    pub fn catalog(&self) -> Catalog {
        self.shared.catalog()
    }

    /// Runs `f` on the local catalogue without cloning it (the I/O path's lookups).
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        self.shared.with_catalog(f)
    }

    /// Ticks whenever the local catalogue changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    pub fn addr_of(&self, cat: &Catalog, id: u64) -> Option<String> {
        cat.nodes
            .get(&id)
            .map(|n| n.addr.clone())
            .or_else(|| self.initial.get(&id).cloned())
    }

    /// The answer to a request `group` must serve on its leader, when this node is not it.
    pub fn not_leader(&self, raft: &Raft, group: u64) -> Error {
        let leader = raft.metrics().borrow_watched().current_leader;
        match leader {
            Some(id) if id != self.me => Error::NotLeader {
                group,
                leader: self.addr_of(&self.catalog(), id),
            },
            _ => Error::Unavailable(format!(
                "group {group} has no leader (election in progress or no quorum)"
            )),
        }
    }

    /// Maps a failed proposal to `group`: a redirect when another node leads it.
    pub fn write_error(
        &self,
        raft: &Raft,
        group: u64,
        e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> Error {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_node {
                Some(n) => Error::NotLeader {
                    group,
                    leader: Some(n.addr),
                },
                None => self.not_leader(raft, group),
            },
            other => Error::Unavailable(format!("group {group}: {other}")),
        }
    }

    /// Proposes a catalogue command on the meta leader; returns its reply.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaReply> {
        let kind = cmd.kind();
        let resp = self
            .raft
            .client_write(Request::Meta(cmd))
            .await
            .map_err(|e| self.write_error(&self.raft, META_GROUP, e))?;
        tracing::debug!(
            command = kind,
            log_index = resp.log_id.index(),
            "meta command applied"
        );
        match resp.data {
            Response::Meta(r) => r.map_err(Error::from),
            other => Err(Error::Internal(format!(
                "meta command produced no reply: {other:?}"
            ))),
        }
    }

    /// On the leader of `group`: waits until a read there is linearizable (lease, else
    /// read index; only read index with `--read-policy read-index`) and returns the index it
    /// had to see applied.
    pub async fn linearize(&self, raft: &Raft, group: u64) -> Result<u64> {
        if self.read_policy == super::ReadPolicy::Lease
            && lease_within_margin(raft)
            && let Ok(r) = raft.ensure_linearizable(ReadPolicy::LeaseRead).await
        {
            return Ok(r.index());
        }
        match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(r) => Ok(r.index()),
            Err(_) => Err(self.not_leader(raft, group)),
        }
    }

    /// A linearizable catalogue read (must run on the meta leader).
    pub async fn read(&self) -> Result<Catalog> {
        self.linearize(&self.raft, META_GROUP).await?;
        Ok(self.catalog())
    }

    /// A catalogue that reflects every change committed before this call, on any node:
    /// linearizable on the meta leader; elsewhere, once the local catalogue has applied
    /// the leader's read index (a follower read). Attach and resize use it, so a volume
    /// created or grown a moment ago is seen with its new size on every node.
    pub async fn fresh(&self) -> Result<Catalog> {
        let no_leader = || {
            Error::Unavailable(format!(
                "the meta group has no leader after {LEADER_WAIT:?} (election in progress or no quorum)"
            ))
        };
        // During an election there is briefly no leader: wait for one (bounded) rather
        // than fail a request that would succeed a moment later.
        let leader = self
            .raft
            .wait(Some(LEADER_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a meta leader")
            .await
            .ok()
            .and_then(|m| m.current_leader)
            .ok_or_else(no_leader)?;
        if leader == self.me {
            return self.read().await;
        }
        let addr = self
            .addr_of(&self.catalog(), leader)
            .ok_or_else(no_leader)?;
        let mut client = self.channels.client(&addr).map_err(Error::Internal)?;
        let req = cairn_proto::cairn::v1::RaftMessage {
            group_id: META_GROUP,
            payload: Default::default(),
        };
        let reply = tokio::time::timeout(FOLLOWER_READ_TIMEOUT, client.read_index(req))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "meta leader {addr} gave no read index within {FOLLOWER_READ_TIMEOUT:?}"
                ))
            })?
            .map_err(|s| Error::Unavailable(format!("meta leader {addr}: {}", s.message())))?
            .into_inner();
        if !reply.error.is_empty() {
            return Err(Error::Unavailable(format!(
                "meta leader {addr}: {}",
                reply.error
            )));
        }
        let index: u64 = crate::raft::decode(&reply.payload)?;
        self.raft
            .wait(Some(FOLLOWER_READ_TIMEOUT))
            .applied_index_at_least(Some(index), "catalogue follower read")
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "the local catalogue did not reach the leader's index {index}: {e}"
                ))
            })?;
        Ok(self.catalog())
    }
}
