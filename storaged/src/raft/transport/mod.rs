//! Outbound Raft transport: openraft's `RaftNetworkV2` for one group and one peer, over
//! cached gRPC channels; a peer that cannot be reached is waited out, never spun on.

mod append_stream;
mod backoff;
mod channels;
mod hints;
mod members;
mod snapshot;
#[cfg(test)]
mod test_peer;
mod unary;

use std::future::Future;
use std::sync::Arc;

use cairn_proto::cairn::v1::{RaftFailure, RaftReply};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{
    Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential,
};
use openraft::raft::{
    AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};

use crate::rebuild::Rebuilds;

pub use append_stream::GROUP_METADATA;

pub use cairn_proto::wire::TARGET_METADATA;

/// `msg` as a request addressed to node `target` (`TARGET_METADATA`).
fn addressed<T>(msg: T, target: NodeId) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        TARGET_METADATA,
        target
            .to_string()
            .parse()
            .expect("a number is valid metadata"),
    );
    req
}
pub use backoff::{CEILING as BACKOFF_CEILING, PeerHealth};
pub use channels::ChannelCache;
pub use hints::AddressHints;
pub use members::Members;

use super::{AppendEntriesRequest, Node, NodeId, Snapshot, StreamAppendResult, TypeConfig, Vote};
use super::{decode, encode};
use append_stream::encode_append;
use unary::Kind;

pub struct NetworkFactory {
    pub group: u64,
    pub channels: ChannelCache,
    /// The node's rebuild budget, shared by every group's outgoing snapshots.
    pub rebuilds: Arc<Rebuilds>,
    /// The group's current membership: where its peers are now.
    pub members: Members,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConn {
        PeerConn {
            group: self.group,
            target,
            addr: node.addr.clone(),
            health: self.channels.health(&node.addr),
            channels: self.channels.clone(),
            streams: true,
            refusals: backoff::Refusals::default(),
            rebuilds: self.rebuilds.clone(),
            members: self.members.clone(),
        }
    }
}

/// One group's connection to one peer.
pub struct PeerConn {
    group: u64,
    target: NodeId,
    addr: String,
    channels: ChannelCache,
    /// The peer node's reachability, shared with every other group talking to it.
    health: Arc<PeerHealth>,
    /// Whether the peer has `AppendStream` (false once it answered UNIMPLEMENTED: a
    /// storaged from before it, during a rolling upgrade).
    streams: bool,
    /// This group's append streams the peer refused (`backoff::Refusals`).
    refusals: backoff::Refusals,
    rebuilds: Arc<Rebuilds>,
    /// The group's membership, asked before each call whether the peer moved.
    members: Members,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable(m: impl Into<String>) -> Unreachable<TypeConfig> {
    Unreachable::new(&Msg(m.into()))
}

/// A gRPC failure talking to `target`: the sender backs off and retries.
fn status_error(target: NodeId, status: &tonic::Status) -> RPCError<TypeConfig> {
    RPCError::Unreachable(unreachable(format!("node {target}: {}", status.message())))
}

impl PeerConn {
    /// Dials the peer where the group's membership has it now: a node that came back on
    /// a new address is followed, and the channels to its old one are dropped.
    /// A peer found answering elsewhere through the seeds (`AddressHints`) is dialled
    /// there first: peers that all moved at once cannot commit their new addresses until
    /// they reach each other.
    fn follow_moves(&mut self) {
        let new = match self.channels.hints().get(self.target) {
            Some(hinted) if hinted == self.addr => None,
            Some(hinted) => Some(hinted),
            None => self.members.moved(self.target, &self.addr),
        };
        let Some(new) = new else {
            return;
        };
        let old = std::mem::replace(&mut self.addr, new);
        self.health = self.channels.health(&self.addr);
        if self.channels.forget(&old) {
            tracing::info!(group = self.group, node = self.target, old = %old, new = %self.addr, "peer moved: dialling its new address");
        } else {
            tracing::debug!(group = self.group, node = self.target, old = %old, new = %self.addr, "peer moved: dialling its new address");
        }
    }

    /// Refuses at once while the peer is backing off: for messages that openraft sends
    /// on a timer (heartbeats, votes) and that must not queue behind a dead peer.
    /// A vote or pre-vote, encoded for the peer at its current address; refused at once
    /// while the peer is backing off.
    fn vote_payload(
        &mut self,
        rpc: &VoteRequest<TypeConfig>,
    ) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        self.follow_moves();
        self.refuse_while_backing_off()?;
        encode_msg(rpc)
    }

    fn refuse_while_backing_off(&self) -> Result<(), RPCError<TypeConfig>> {
        match self.health.backing_off() {
            None => Ok(()),
            Some(at) => Err(RPCError::Unreachable(unreachable(format!(
                "node {} unreachable; next attempt in {:?}",
                self.target,
                at.saturating_duration_since(tokio::time::Instant::now())
            )))),
        }
    }
}

/// A Raft message encoded for the wire.
fn encode_msg<T: serde::Serialize>(m: &T) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    encode(m).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// The remote Raft's encoded `Result` in `reply`, or its typed failure.
fn decode_reply<Resp>(reply: RaftReply) -> Result<Resp, RPCError<TypeConfig>>
where
    Resp: for<'de> serde::Deserialize<'de>,
{
    let failure = RaftFailure::try_from(reply.failure).unwrap_or(RaftFailure::Other);
    if failure != RaftFailure::None || !reply.error.is_empty() {
        // The peer answered, but its Raft for the group did not: it does not host the
        // group yet, or the group stopped there. Either way openraft backs off and
        // retries (`PeerConn::backoff`).
        let what = match failure {
            RaftFailure::NotHosted => "group not hosted",
            RaftFailure::Stopped => "group stopped",
            RaftFailure::None | RaftFailure::Other => "refused",
        };
        return Err(RPCError::Unreachable(unreachable(format!(
            "{what}: {}",
            reply.error
        ))));
    }
    decode::<Resp>(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = super::SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.follow_moves();
        let payload = encode_append(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = append_stream::append_ttl(option.hard_ttl(), payload.len());
        self.call(Kind::Append, payload, ttl).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest> + OptionalSend + Unpin + 'static,
    {
        self.follow_moves();
        // A stream of one request (openraft's heartbeats, every 100 ms per follower)
        // goes as a unary AppendEntries: opening an HTTP/2 stream for it costs more. A
        // heartbeat to a peer backing off fails at once: the next one is 100 ms away.
        if input.size_hint().1 == Some(1) {
            if let Err(e) = self.refuse_while_backing_off() {
                return Box::pin(async move { Err(e) });
            }
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // Replication waits out the peer's backoff before it pulls a single entry
            // from the log: a dead peer is tried once per backoff step, not in a loop.
            self.health.ready().await;
            if self.streams {
                self.refusals.wait().await;
                self.open_stream(input, option).await
            } else {
                stream_append_sequential(self, input, option).await
            }
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = self.vote_payload(&rpc)?;
        self.call(Kind::Vote, payload, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = self.vote_payload(&rpc)?;
        match self.send(Kind::PreVote, payload, option.hard_ttl()).await? {
            // A peer running a storaged from before Pre-Vote: count it as granting, as
            // openraft does for a network without the call, so a rolling upgrade stays
            // live. An unreachable peer is an error, never a grant.
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                Ok(VoteResponse::new(rpc.vote, None, true))
            }
            r => self.reply(r),
        }
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.follow_moves();
        let payload = encode_msg(&rpc)?;
        // The named node waits up to an election timeout for its log to be flushed.
        let ttl = option.hard_ttl().max(unary::TRANSFER_TTL);
        self.call(Kind::TransferLeader, payload, ttl).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.follow_moves();
        // No overall deadline: a large volume takes as long as it takes, page by page
        // under HTTP/2 flow control. openraft cancels a transfer it no longer wants.
        let send = async {
            self.health.ready().await;
            self.stream_snapshot(vote, snapshot).await
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => {
                    StreamingError::Network(NetworkError::new(&AnyError::error(other.to_string())))
                }
            }),
        }
    }

    /// openraft's own pause between replication attempts after errors (a peer that
    /// answers but refuses, such as one not hosting the group yet): jittered, doubling
    /// from 50 ms to 2 s, instead of its fixed default.
    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(backoff::series()))
    }
}

#[cfg(test)]
impl PeerConn {
    /// A connection from group 7 to node 2 at `addr`.
    fn for_test(addr: String) -> Self {
        let channels = ChannelCache::new(cairn_client::Security::Insecure);
        PeerConn {
            group: 7,
            target: 2,
            health: channels.health(&addr),
            addr,
            channels,
            streams: true,
            refusals: backoff::Refusals::default(),
            rebuilds: crate::rebuild::Rebuilds::new(crate::rebuild::DEFAULT_RATE, 2),
            members: Members::default(),
        }
    }
}
