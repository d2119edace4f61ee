//! Outbound Raft transport: one tonic `RaftService` client per peer address,
//! channels cached and shared by every group; each message carries its group id.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::cairn::v1::raft_service_client::RaftServiceClient;
use cairn_proto::cairn::v1::{RaftMessage, RaftReply, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{
    Node, NodeId, Snapshot, SnapshotData, TypeConfig, Vote, decode, encode, encode_sized,
    entry_size_hint,
};

/// Lazily connected channels keyed by peer address.
#[derive(Clone, Default)]
pub struct ChannelCache {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelCache {
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut m = self.inner.lock().expect("channel cache poisoned");
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            .connect_lazy();
        m.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(RaftServiceClient::new(self.get(addr)?)
            .max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20))
    }
}

pub struct NetworkFactory {
    pub group: u64,
    pub channels: ChannelCache,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConn {
        PeerConn {
            group: self.group,
            target,
            addr: node.addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

pub struct PeerConn {
    group: u64,
    target: NodeId,
    addr: String,
    channels: ChannelCache,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable(m: impl Into<String>) -> Unreachable<TypeConfig> {
    Unreachable::new(&Msg(m.into()))
}

enum Kind {
    Append,
    Vote,
    PreVote,
    TransferLeader,
}

impl PeerConn {
    /// Sends one encoded message; the reply is the remote Raft's encoded `Result`.
    async fn call<Resp>(
        &self,
        kind: Kind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Resp: for<'de> serde::Deserialize<'de>,
    {
        let r = self.send(kind, payload, ttl).await?;
        self.reply(r)
    }

    /// Sends one encoded message and returns the gRPC outcome; only no answer within
    /// `ttl` (or no channel) is an error here.
    async fn send(
        &self,
        kind: Kind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Result<tonic::Response<RaftReply>, tonic::Status>, RPCError<TypeConfig>> {
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let msg = RaftMessage {
            group_id: self.group,
            payload: payload.into(),
        };
        let fut = async {
            match kind {
                Kind::Append => client.append_entries(msg).await,
                Kind::Vote => client.vote(msg).await,
                Kind::PreVote => client.pre_vote(msg).await,
                Kind::TransferLeader => client.transfer_leader(msg).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(RPCError::Network(NetworkError::new(&Msg(format!(
                "no reply from node {} in {ttl:?}",
                self.target
            ))))),
            Ok(r) => Ok(r),
        }
    }

    /// The remote Raft's encoded `Result`, or why there is none.
    fn reply<Resp>(
        &self,
        r: Result<tonic::Response<RaftReply>, tonic::Status>,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Resp: for<'de> serde::Deserialize<'de>,
    {
        let reply = match r {
            Err(status) => {
                return Err(RPCError::Unreachable(unreachable(format!(
                    "node {}: {}",
                    self.target,
                    status.message()
                ))));
            }
            Ok(r) => r.into_inner(),
        };
        if !reply.error.is_empty() {
            // The peer does not host the group yet, or its Raft refused: back off and retry.
            return Err(RPCError::Unreachable(unreachable(reply.error)));
        }
        decode::<Resp>(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    /// Streams a snapshot page by page; only a stream whose final message says `last`
    /// is installed, so a read error here ends it early and the receiver drops it.
    async fn stream_snapshot(
        &self,
        vote: Vote,
        snapshot: Snapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, RPCError<TypeConfig>> {
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let net = |e: std::io::Error| RPCError::Network(NetworkError::new(&e));
        let mut header = Some(encode(&(vote, snapshot.meta)).map_err(net)?);
        let mut data = snapshot.snapshot;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let group = self.group;
        let produce = async move {
            loop {
                let page = data.next_page().await?;
                let last = page.is_none();
                let msg = SnapshotChunk {
                    group_id: group,
                    header: header.take().unwrap_or_default().into(),
                    page: match page {
                        Some(p) => encode(&p)?.into(),
                        None => Default::default(),
                    },
                    last,
                };
                // A closed stream means the call has already ended; it reports why.
                if tx.send(msg).await.is_err() || last {
                    return Ok::<_, std::io::Error>(());
                }
            }
        };
        let (reply, produced) =
            tokio::join!(client.install_snapshot(ReceiverStream::new(rx)), produce);
        produced.map_err(net)?;
        self.reply(reply)
    }
}

/// How long one AppendEntries may take. openraft suggests its heartbeat interval,
/// but a batch of block writes (up to `max_payload_entries` × 1 MiB) must also be
/// sent, decoded and fsynced by the follower: too short a bound makes every retry
/// time out and the group stalls. Allow 0.5 s plus 20 MB/s of payload.
fn append_ttl(suggested: Duration, payload_bytes: usize) -> Duration {
    suggested.max(Duration::from_millis(500)) + Duration::from_nanos(payload_bytes as u64 * 50)
}

/// How long a TransferLeader may take: the new leader first waits (up to openraft's
/// `election_timeout_min`, 300 ms here) until its log holds the old leader's last entry.
const TRANSFER_TTL: Duration = Duration::from_millis(1500);

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let hint = 256 + rpc.entries.iter().map(entry_size_hint).sum::<usize>();
        let payload =
            encode_sized(&rpc, hint).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = append_ttl(option.hard_ttl(), payload.len());
        self.call(Kind::Append, payload, ttl).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.call(Kind::Vote, payload, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
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
        let payload = encode(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The named node waits up to an election timeout for its log to be flushed.
        let ttl = option.hard_ttl().max(TRANSFER_TTL);
        self.call(Kind::TransferLeader, payload, ttl).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // No overall deadline: a large volume takes as long as it takes, page by page
        // under HTTP/2 flow control. openraft cancels a transfer it no longer wants.
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.stream_snapshot(vote, snapshot) => r.map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Network(n) => StreamingError::Network(n),
                other => {
                    StreamingError::Network(NetworkError::new(&AnyError::error(other.to_string())))
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_ttl_grows_with_the_payload() {
        let hb = Duration::from_millis(100);
        assert_eq!(append_ttl(hb, 0), Duration::from_millis(500));
        // 64 entries of 1 MiB: several seconds, not the heartbeat interval.
        assert!(append_ttl(hb, 64 << 20) > Duration::from_secs(3));
        assert_eq!(
            append_ttl(Duration::from_secs(2), 0),
            Duration::from_secs(2)
        );
    }
}
