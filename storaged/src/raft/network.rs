//! Outbound Raft transport: one tonic `RaftService` client per peer address,
//! channels cached and shared by every group; each message carries its group id.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use cairn_proto::cairn::v1::raft_service_client::RaftServiceClient;
use cairn_proto::cairn::v1::{RaftMessage, RaftReply, SnapshotChunk};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, OptionalSend};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{
    AppendEntriesRequest, Node, NodeId, Snapshot, SnapshotData, StreamAppendResult, TypeConfig,
    Vote, decode, encode, encode_sized, entry_size_hint,
};

/// Metadata naming the group of an `AppendStream`.
pub const GROUP_METADATA: &str = "x-cairn-group";

/// Lazily connected channels keyed by peer address.
#[derive(Clone, Default)]
pub struct ChannelCache {
    inner: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelCache {
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        self.get_for(addr, addr)
    }

    /// The channel cached under `key`, connected to `addr`.
    fn get_for(&self, key: &str, addr: &str) -> Result<Channel, String> {
        let mut m = self.inner.lock().expect("channel cache poisoned");
        if let Some(c) = m.get(key) {
            return Ok(c.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address `{addr}`: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_adaptive_window(true)
            // A peer that vanished without closing (power loss, partition) is found within
            // 15 s even on a connection carrying only a long-lived `AppendStream`.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_lazy();
        m.insert(key.to_string(), ch.clone());
        Ok(ch)
    }

    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(Self::limits(RaftServiceClient::new(self.get(addr)?)))
    }

    /// A client on a connection of its own for `AppendStream`s: a follower that stops
    /// reading one (its group's Raft busy, 64 batches pending) holds HTTP/2 window on that
    /// connection, which must not hold up heartbeats and votes.
    fn stream_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        let ch = self.get_for(&format!("{addr}#append"), addr)?;
        Ok(Self::limits(RaftServiceClient::new(ch)))
    }

    fn limits(c: RaftServiceClient<Channel>) -> RaftServiceClient<Channel> {
        c.max_decoding_message_size(512 << 20)
            .max_encoding_message_size(512 << 20)
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
            streams: true,
        }
    }
}

pub struct PeerConn {
    group: u64,
    target: NodeId,
    addr: String,
    channels: ChannelCache,
    /// Whether the peer has `AppendStream` (false once it answered UNIMPLEMENTED: a
    /// storaged from before it, during a rolling upgrade).
    streams: bool,
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
        match r {
            Err(status) => Err(status_error(self.target, &status)),
            Ok(r) => decode_reply(r.into_inner()),
        }
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

/// A gRPC failure talking to `target`: the sender backs off and retries.
fn status_error(target: NodeId, status: &tonic::Status) -> RPCError<TypeConfig> {
    RPCError::Unreachable(unreachable(format!("node {target}: {}", status.message())))
}

/// The remote Raft's encoded `Result` in `reply`, or its error.
fn decode_reply<Resp>(reply: RaftReply) -> Result<Resp, RPCError<TypeConfig>>
where
    Resp: for<'de> serde::Deserialize<'de>,
{
    if !reply.error.is_empty() {
        // The peer does not host the group yet, or its Raft refused: back off and retry.
        return Err(RPCError::Unreachable(unreachable(reply.error)));
    }
    decode::<Resp>(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

/// An AppendEntries encoded into a buffer sized for its entries up front.
fn encode_append(rpc: &AppendEntriesRequest) -> std::io::Result<Vec<u8>> {
    let hint = 256 + rpc.entries.iter().map(entry_size_hint).sum::<usize>();
    encode_sized(rpc, hint)
}

/// Deadlines of the requests of an `AppendStream` sent and not yet answered, oldest
/// first; `sent` wakes a reader waiting with none outstanding.
#[derive(Default)]
struct Outstanding {
    deadlines: Mutex<VecDeque<Instant>>,
    sent: Notify,
}

impl Outstanding {
    /// A request of `bytes` sent at `at`, with `ttl` (`append_ttl`) for it alone. Replies
    /// come in order, so it is also due no sooner than the request before it plus the
    /// time for its own payload: the follower handles them one after the other.
    fn push(&self, at: Instant, ttl: Duration, bytes: usize) {
        let mut d = self.deadlines.lock().expect("outstanding lock poisoned");
        let own = at + ttl;
        let due = match d.back() {
            Some(prev) => own.max(*prev + payload_time(bytes)),
            None => own,
        };
        d.push_back(due);
        drop(d);
        self.sent.notify_one();
    }
    fn oldest(&self) -> Option<Instant> {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .front()
            .copied()
    }
    fn unanswered(&self) -> usize {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .len()
    }
    fn answered(&self) {
        self.deadlines
            .lock()
            .expect("outstanding lock poisoned")
            .pop_front();
    }
}

impl PeerConn {
    /// Opens a pipelined `AppendStream`: openraft's requests are sent as it makes them,
    /// without waiting for replies, and the replies come back in order. Each request must
    /// be answered by its deadline (`Outstanding::push`), or the stream ends with an error.
    async fn open_stream<S>(
        &mut self,
        input: S,
        option: RPCOption,
    ) -> Result<
        BoxStream<'static, Result<StreamAppendResult, RPCError<TypeConfig>>>,
        RPCError<TypeConfig>,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest> + Send + Unpin + 'static,
    {
        let mut client = self
            .channels
            .stream_client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let (group, target, base) = (self.group, self.target, option.hard_ttl());
        let outstanding = Arc::new(Outstanding::default());
        // A task of its own pulls openraft's requests and drops the generator as soon as
        // the reply stream is dropped (openraft ends the session): hyper stops polling a
        // body it cannot send (a follower not reading), and the generator may be parked
        // holding openraft's replication lock, which must not wait for the connection.
        let (closed_tx, mut closed_rx) = oneshot::channel::<()>();
        let (tx, rx) = tokio::sync::mpsc::channel::<AppendEntriesRequest>(1);
        tokio::spawn(async move {
            let mut input = input;
            loop {
                let rpc = tokio::select! {
                    biased;
                    _ = &mut closed_rx => return,
                    r = input.next() => match r {
                        Some(rpc) => rpc,
                        None => return,
                    },
                };
                tokio::select! {
                    biased;
                    _ = &mut closed_rx => return,
                    r = tx.send(rpc) => if r.is_err() { return },
                }
            }
        });
        let sent = outstanding.clone();
        let requests = tokio_stream::StreamExt::map_while(
            ReceiverStream::new(rx),
            move |rpc: AppendEntriesRequest| match encode_append(&rpc) {
                Ok(payload) => {
                    let len = payload.len();
                    sent.push(Instant::now(), append_ttl(base, len), len);
                    Some(RaftMessage {
                        group_id: group,
                        payload: payload.into(),
                    })
                }
                Err(e) => {
                    tracing::error!(group, target, error = %e, "cannot encode AppendEntries");
                    None
                }
            },
        );
        let mut req = tonic::Request::new(requests);
        req.metadata_mut().insert(
            GROUP_METADATA,
            group
                .to_string()
                .parse()
                .expect("a number is valid metadata"),
        );
        let opened = tokio::time::timeout(append_ttl(base, 0), client.append_stream(req)).await;
        let replies = match opened {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&Msg(format!(
                    "node {target} did not open an append stream in time"
                )))));
            }
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unimplemented {
                    tracing::info!(
                        group,
                        target,
                        "peer has no AppendStream: sending AppendEntries"
                    );
                    self.streams = false;
                }
                return Err(status_error(target, &status));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let state = Some((replies, outstanding, closed_tx));
        Ok(Box::pin(futures::stream::unfold(
            state,
            move |state| async move {
                let (mut replies, outstanding, closed_tx) = state?;
                let next = loop {
                    match outstanding.oldest() {
                        Some(deadline) => {
                            match tokio::time::timeout_at(deadline, replies.message()).await {
                                Ok(r) => break r,
                                Err(_) => {
                                    let e = NetworkError::new(&Msg(format!(
                                        "no reply from node {target} in time (append stream)"
                                    )));
                                    return Some((Err(RPCError::Network(e)), None));
                                }
                            }
                        }
                        // Nothing outstanding: wait for a reply or for the next request to go.
                        None => tokio::select! {
                            r = replies.message() => break r,
                            _ = outstanding.sent.notified() => {}
                        },
                    }
                };
                let item = match next {
                    // The follower ended the stream: a clean end only if all was answered.
                    Ok(None) => match outstanding.unanswered() {
                        0 => return None,
                        n => Err(RPCError::Unreachable(unreachable(format!(
                            "node {target} ended the append stream with {n} unanswered"
                        )))),
                    },
                    Err(status) => Err(status_error(target, &status)),
                    Ok(Some(reply)) => match decode_reply::<StreamAppendResult>(reply) {
                        Ok(r) => {
                            outstanding.answered();
                            return Some((Ok(r), Some((replies, outstanding, closed_tx))));
                        }
                        Err(e) => Err(e),
                    },
                };
                Some((item, None))
            },
        )))
    }
}

/// How long one AppendEntries may take. openraft suggests its heartbeat interval,
/// but a batch of block writes (up to `max_payload_entries` × 1 MiB) must also be
/// sent, decoded and fsynced by the follower: too short a bound makes every retry
/// time out and the group stalls. Allow 0.5 s plus 20 MB/s of payload.
fn append_ttl(suggested: Duration, payload_bytes: usize) -> Duration {
    suggested.max(Duration::from_millis(500)) + payload_time(payload_bytes)
}

/// The time allowed for a payload to be sent, decoded and fsynced: 20 MB/s.
fn payload_time(bytes: usize) -> Duration {
    Duration::from_nanos(bytes as u64 * 50)
}

/// How long a TransferLeader may take: the new leader first waits (up to openraft's
/// `election_timeout_min`, 300 ms here) until its log holds the old leader's last entry.
const TRANSFER_TTL: Duration = Duration::from_millis(1500);

impl RaftNetworkV2<TypeConfig> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = encode_append(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = append_ttl(option.hard_ttl(), payload.len());
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
        // A stream of one request (openraft's heartbeats, every 100 ms per follower)
        // goes as a unary AppendEntries: opening an HTTP/2 stream for it costs more.
        if !self.streams || input.size_hint().1 == Some(1) {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move { self.open_stream(input, option).await })
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
    use cairn_proto::cairn::v1::raft_service_server::{RaftService, RaftServiceServer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tonic::{Request, Response, Status, Streaming};

    /// How the test peer answers `AppendStream`.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// UNIMPLEMENTED: a storaged from before it.
        Old,
        /// Opens it and never answers.
        Silent,
        /// Takes a request and ends the stream, answering nothing.
        Ends,
    }

    struct Peer {
        mode: Mode,
        unary: AtomicU64,
    }

    type Replies = crate::service::raft_api::ReplyStream;

    #[tonic::async_trait]
    impl RaftService for Peer {
        type AppendStreamStream = Replies;
        async fn append_stream(
            &self,
            r: Request<Streaming<RaftMessage>>,
        ) -> Result<Response<Replies>, Status> {
            if self.mode == Mode::Ends {
                // Take a request first: it is then outstanding at the sender.
                r.into_inner().message().await?;
            }
            match self.mode {
                Mode::Old => Err(Status::unimplemented("AppendStream")),
                Mode::Silent => Ok(Response::new(Box::pin(futures::stream::pending()))),
                Mode::Ends => Ok(Response::new(Box::pin(futures::stream::empty()))),
            }
        }
        async fn append_entries(
            &self,
            r: Request<RaftMessage>,
        ) -> Result<Response<RaftReply>, Status> {
            let _: AppendEntriesRequest = decode(&r.into_inner().payload).unwrap();
            self.unary.fetch_add(1, Ordering::SeqCst);
            let ok = AppendEntriesResponse::<TypeConfig>::Success;
            Ok(Response::new(RaftReply {
                payload: encode(&ok).unwrap().into(),
                error: String::new(),
            }))
        }
        async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("vote"))
        }
        async fn pre_vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("pre_vote"))
        }
        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("install_snapshot"))
        }
        async fn group_status(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("group_status"))
        }
        async fn read_index(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("read_index"))
        }
        async fn transfer_leader(
            &self,
            _: Request<RaftMessage>,
        ) -> Result<Response<RaftReply>, Status> {
            Err(Status::unimplemented("transfer_leader"))
        }
    }

    /// Serves `peer` on a loopback port; a connection to it from group 7 as node 2.
    async fn serve(peer: Arc<Peer>) -> PeerConn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServiceServer::from_arc(peer))
                .serve_with_incoming(incoming),
        );
        PeerConn {
            group: 7,
            target: 2,
            addr,
            channels: ChannelCache::default(),
            streams: true,
        }
    }

    fn heartbeat() -> AppendEntriesRequest {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: vec![],
        }
    }

    #[tokio::test]
    async fn a_peer_without_append_stream_gets_append_entries() {
        let peer = Arc::new(Peer {
            mode: Mode::Old,
            unary: AtomicU64::new(0),
        });
        let mut conn = serve(peer.clone()).await;
        let opt = RPCOption::new(Duration::from_millis(100));
        let two = || futures::stream::iter(vec![heartbeat(), heartbeat()]);
        let first = conn.stream_append(two(), opt.clone()).await.err();
        assert!(
            matches!(first, Some(RPCError::Unreachable(_))),
            "UNIMPLEMENTED is an error the first time"
        );
        assert!(!conn.streams, "and the peer is then sent AppendEntries");
        let replies: Vec<_> = conn
            .stream_append(two(), opt)
            .await
            .expect("the fallback opens")
            .collect()
            .await;
        assert_eq!(replies.len(), 2);
        assert!(
            replies.iter().all(|r| matches!(r, Ok(Ok(_)))),
            "{replies:?}"
        );
        assert_eq!(peer.unary.load(Ordering::SeqCst), 2);
    }

    /// An `AppendStream` to a peer answering in `mode`, sent two requests and left open
    /// (openraft's replication keeps its stream open), and the first thing it yields.
    async fn first_reply(mode: Mode) -> Option<Result<StreamAppendResult, RPCError<TypeConfig>>> {
        let mut conn = serve(Arc::new(Peer {
            mode,
            unary: AtomicU64::new(0),
        }))
        .await;
        let input =
            futures::stream::iter(vec![heartbeat(), heartbeat()]).chain(futures::stream::pending());
        let opt = RPCOption::new(Duration::from_millis(100));
        let mut replies = conn.open_stream(input, opt).await.expect("stream opens");
        let first = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a silent or departed follower must not hang replication");
        if first.as_ref().is_some_and(|r| r.is_err()) {
            assert!(
                replies.next().await.is_none(),
                "the stream ends after an error"
            );
        }
        first
    }

    #[tokio::test]
    async fn an_append_stream_without_replies_ends_with_an_error() {
        let started = Instant::now();
        let first = first_reply(Mode::Silent).await;
        assert!(
            matches!(first, Some(Err(RPCError::Network(_)))),
            "no reply in time is a network error: {first:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= append_ttl(Duration::from_millis(100), 0),
            "not before the deadline: {waited:?}"
        );
    }

    #[tokio::test]
    async fn an_append_stream_ended_with_requests_unanswered_is_an_error() {
        let first = first_reply(Mode::Ends).await;
        assert!(
            matches!(first, Some(Err(RPCError::Unreachable(_)))),
            "requests went unanswered, so not a clean end: {first:?}"
        );
    }

    #[test]
    fn queued_appends_are_due_one_after_the_other() {
        let o = Outstanding::default();
        let t0 = Instant::now();
        let hb = Duration::from_millis(100);
        let big = 64 << 20;
        // Two large batches sent at once: the second is answered after the first is
        // handled, so it is due its own payload's time after the first.
        o.push(t0, append_ttl(hb, big), big);
        o.push(t0, append_ttl(hb, big), big);
        // A small one sent much later is due by its own deadline.
        let later = t0 + Duration::from_secs(60);
        o.push(later, append_ttl(hb, 0), 0);
        let d: Vec<_> = o.deadlines.lock().unwrap().iter().copied().collect();
        assert_eq!(d[0], t0 + append_ttl(hb, big));
        assert_eq!(d[1], d[0] + payload_time(big));
        assert_eq!(d[2], later + append_ttl(hb, 0));
    }

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
