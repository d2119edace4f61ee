//! Inbound Raft transport: decodes a group's message and hands it to the local
//! Raft of that group; a group not hosted here answers an error the sender backs off on.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::cairn::v1::raft_service_server::RaftService;
use cairn_proto::cairn::v1::{
    PingReply, PingRequest, RaftFailure, RaftMessage, RaftReply, SnapshotChunk,
};
use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{Fatal, RaftError};
use tonic::{Request, Response, Status, Streaming};

use crate::node::StorageNode;
use crate::raft::resume::{HeldRange, Incoming, Partial};
use crate::raft::snapshot::SpoolWriter;
use crate::raft::{
    AppendEntriesRequest, META_GROUP, Raft, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote,
    decode, encode,
};
use crate::raft::{GROUP_METADATA, TARGET_METADATA};
use crate::repair::change::MemberChange;
use crate::service::raft_sender::{Claimed, check_sender, speaks_for, voter};
use crate::tls::Identity;

pub struct RaftApi {
    pub node: Arc<StorageNode>,
    /// Set when the server stops: open `AppendStream`s end (a leader elsewhere keeps
    /// its stream to us open for as long as it leads, and a graceful shutdown waits
    /// for every stream to finish).
    pub closing: tokio::sync::watch::Receiver<bool>,
}

/// Why a group's Raft gave no answer, typed for the wire (`RaftReply.failure`).
trait WireFailure: std::fmt::Display {
    fn failure(&self) -> RaftFailure;
}

/// A message for a group this node does not host (yet).
struct NotHosted {
    group: u64,
    node: u64,
}

impl std::fmt::Display for NotHosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {} is not hosted on node {} (yet)",
            self.group, self.node
        )
    }
}

impl WireFailure for NotHosted {
    fn failure(&self) -> RaftFailure {
        RaftFailure::NotHosted
    }
}

impl<E: std::error::Error> WireFailure for RaftError<TypeConfig, E> {
    fn failure(&self) -> RaftFailure {
        match self {
            RaftError::Fatal(_) => RaftFailure::Stopped,
            RaftError::APIError(_) => RaftFailure::Other,
        }
    }
}

impl WireFailure for Fatal<TypeConfig> {
    fn failure(&self) -> RaftFailure {
        RaftFailure::Stopped
    }
}

impl WireFailure for crate::Error {
    fn failure(&self) -> RaftFailure {
        RaftFailure::Other
    }
}

impl WireFailure for std::convert::Infallible {
    fn failure(&self) -> RaftFailure {
        match *self {}
    }
}

/// A Raft outcome on the wire: the encoded value, or the typed failure and its text.
fn raft_reply<T: serde::Serialize, E: WireFailure>(r: Result<T, E>) -> Result<RaftReply, Status> {
    Ok(match r {
        Ok(v) => RaftReply {
            payload: encode(&v)
                .map_err(|e| Status::internal(e.to_string()))?
                .into(),
            ..Default::default()
        },
        Err(e) => RaftReply {
            payload: Default::default(),
            error: e.to_string(),
            failure: e.failure().into(),
        },
    })
}

fn reply<T: serde::Serialize, E: WireFailure>(
    r: Result<T, E>,
) -> Result<Response<RaftReply>, Status> {
    raft_reply(r).map(Response::new)
}

impl RaftApi {
    /// Refuses a message addressed to another node id (`TARGET_METADATA`): this node's data
    /// dir is not the one that member's promises were made from.
    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let me = self.node.cfg().id;
        let target = req
            .metadata()
            .get(TARGET_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match target {
            Some(t) if t != me => {
                tracing::warn!(
                    target = t,
                    node = me,
                    "Raft message for another node id at this address"
                );
                let mut refusal = Status::failed_precondition(format!(
                    "addressed to node {t}, but this is node {me} (its data dir was replaced: \
                     remove node {t} from the cluster)"
                ));
                // Tells the sender's backoff that node `t` is not here (`is_misaddressed`).
                refusal.metadata_mut().insert(
                    TARGET_METADATA,
                    me.to_string().parse().expect("a number is valid metadata"),
                );
                Err(refusal)
            }
            _ => Ok(()),
        }
    }

    fn raft(&self, group: u64) -> Result<Raft, NotHosted> {
        self.node.group(group).ok_or(NotHosted {
            group,
            node: self.node.cfg().id,
        })
    }
}

impl RaftApi {
    /// Decodes a group's message and hands it to that group's Raft through `f`.
    async fn deliver<Req, T, E, F, Fut>(
        &self,
        req: Request<RaftMessage>,
        f: F,
    ) -> Result<Response<RaftReply>, Status>
    where
        Req: for<'de> serde::Deserialize<'de> + Claimed,
        T: serde::Serialize,
        E: WireFailure,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        self.check_target(&req)?;
        let caller = req.extensions().get::<Identity>().cloned();
        let m = req.into_inner();
        let rpc: Req = decode(&m.payload).map_err(bad)?;
        match self.raft(m.group_id) {
            Ok(raft) => {
                if let Some(claimed) = rpc.claimed_sender() {
                    check_sender(&self.node, caller.as_ref(), &raft, m.group_id, claimed)?;
                }
                let out = f(raft, rpc).await;
                // After the message is taken (a follower's leader lease renewed by it), so
                // a quiet group's restarted election timer does not fire on a stale lease.
                self.node.wake(m.group_id);
                reply(out)
            }
            Err(e) => reply::<(), _>(Err(e)),
        }
    }
}

/// Another transfer of `group`'s snapshot is being received: the sender backs off.
fn busy(group: u64) -> Status {
    Status::unavailable(format!(
        "a snapshot of group {group} is being received here already"
    ))
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("payload: {e}"))
}

/// The replies of one `AppendStream`, in the order of its requests.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

/// The group an `AppendStream` is for, from its metadata: the stream is answered (and
/// its first entries sent) before any message of it arrives.
fn stream_group<T>(req: &Request<T>) -> Result<u64, Status> {
    req.metadata()
        .get(GROUP_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Status::invalid_argument(format!("{GROUP_METADATA}: a group id is required"))
        })
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let group = stream_group(&req)?;
        self.check_target(&req)?;
        let caller = req.extensions().get::<Identity>().cloned();
        // The sender backs off and retries while this node does not host the group.
        let raft = self
            .raft(group)
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let node = self.node.clone();
        let checked = raft.clone();
        // A request that does not decode (or a broken stream) ends the input; openraft
        // then answers what came before it, and the sender starts a new stream.
        let mut closing = self.closing.clone();
        let closed = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        let input = tokio_stream::StreamExt::map_while(req.into_inner(), move |m| {
            let m = m.ok()?;
            match decode::<AppendEntriesRequest>(&m.payload) {
                Ok(rpc) if m.group_id == group => {
                    let claimed = rpc.claimed_sender()?;
                    match check_sender(&node, caller.as_ref(), &checked, group, claimed) {
                        Ok(()) => Some(rpc),
                        Err(e) => {
                            tracing::warn!(group, error = e.message(), "append stream refused");
                            None
                        }
                    }
                }
                Ok(_) => {
                    tracing::warn!(group, other = m.group_id, "append stream mixes groups");
                    None
                }
                Err(e) => {
                    tracing::warn!(group, error = %e, "undecodable append in stream");
                    None
                }
            }
        });
        // Raft answers what it was sent, in order, and ends after the first refusal, or
        // with an `Err` if it stops here (the group is being removed): the last reply.
        let woken = self.node.clone();
        let out = Box::pin(raft.stream_append(input.take_until(closed))).map(move |r| {
            // Each answered append (the lease renewed by it) wakes the group if quiet.
            woken.wake(group);
            raft_reply(r)
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        self.deliver(
            req,
            |raft, rpc| async move { raft.append_entries(rpc).await },
        )
        .await
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        self.deliver(req, |raft, rpc| async move { raft.vote(rpc).await })
            .await
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        self.deliver(req, |raft, rpc| async move { raft.pre_vote(rpc).await })
            .await
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_target(&req)?;
        let caller = req.extensions().get::<Identity>().cloned();
        let mut stream = req.into_inner();
        let Some(mut msg) = stream.message().await? else {
            return Err(Status::invalid_argument("header: empty snapshot stream"));
        };
        let group = msg.group_id;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&msg.header).map_err(|e| Status::invalid_argument(format!("header: {e}")))?;
        let raft = match self.raft(group) {
            Ok(r) => r,
            Err(e) => return reply::<(), _>(Err(e)),
        };
        let claimed = voter(&vote);
        check_sender(&self.node, caller.as_ref(), &raft, group, claimed)?;
        // Spool every page to disk first: the install replaces the group's state, so
        // it starts only once the whole snapshot is here. A volume's pages go to its
        // partial spool, kept if the stream breaks (`resume.rs`).
        let spool_err = |e: std::io::Error| Status::internal(format!("snapshot spool: {e}"));
        let mut spool = if group == META_GROUP {
            Incoming::Plain(
                SpoolWriter::create(&self.node.spool_dir(), group)
                    .await
                    .map_err(spool_err)?,
            )
        } else {
            let partial = Partial::take(&self.node.spool_dir(), group)
                .await
                .map_err(spool_err)?
                .ok_or_else(|| busy(group))?;
            Incoming::Resumable(partial.receive().await.map_err(spool_err)?)
        };
        let mut pages = 0u64;
        loop {
            if !msg.page.is_empty() {
                spool.page(&msg.page).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => {
                        Status::invalid_argument(format!("page: {e}"))
                    }
                    _ => spool_err(e),
                })?;
                self.node.metrics().rebuild_received(msg.page.len() as u64);
                pages += 1;
            }
            if msg.last {
                break;
            }
            msg = stream
                .message()
                .await?
                .ok_or_else(|| Status::aborted("snapshot stream ended before its last page"))?;
        }
        let (spool, reused) = spool.finish().await.map_err(spool_err)?;
        tracing::info!(group, pages, reused, last_log_id = ?meta.last_log_id, "received snapshot");
        let snap = Snapshot {
            meta,
            snapshot: SnapshotData::Spooled(spool),
        };
        let out = raft.install_full_snapshot(vote, snap).await;
        self.node.wake(group);
        reply(out)
    }

    async fn snapshot_held(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        self.check_target(&req)?;
        let caller = req.extensions().get::<Identity>().cloned();
        let m = req.into_inner();
        let group = m.group_id;
        let vote: Vote = decode(&m.payload).map_err(bad)?;
        let raft = match self.raft(group) {
            Ok(r) => r,
            Err(e) => return reply::<(), _>(Err(e)),
        };
        check_sender(&self.node, caller.as_ref(), &raft, group, voter(&vote))?;
        if group == META_GROUP {
            return reply::<_, std::convert::Infallible>(Ok(Vec::<HeldRange>::new()));
        }
        let err = |e: std::io::Error| Status::internal(format!("partial snapshot spool: {e}"));
        let partial = Partial::take(&self.node.spool_dir(), group)
            .await
            .map_err(err)?
            .ok_or_else(|| busy(group))?;
        let held = tokio::task::spawn_blocking(move || partial.held())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(err)?;
        reply::<_, std::convert::Infallible>(Ok(held))
    }

    async fn group_status(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        let mut status = self.node.group_status(m.group_id);
        status.node_id = self.node.cfg().id;
        reply::<_, std::convert::Infallible>(Ok(status))
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        self.deliver(req, |raft, rpc| async move {
            raft.handle_transfer_leader(rpc).await
        })
        .await
    }

    async fn change_members(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        // Only the meta leader drives repairs: another node's certificate may not change a
        // group's members.
        let caller = req.extensions().get::<Identity>().cloned();
        if let Some(who) = caller {
            let leader = self
                .node
                .meta_raft()
                .metrics()
                .borrow_watched()
                .current_leader;
            if leader.is_none_or(|l| !speaks_for(&self.node, &who, l)) {
                return Err(Status::permission_denied(format!(
                    "identity `{who}` may not change members: only the meta leader ({leader:?}) does"
                )));
            }
        }
        let m = req.into_inner();
        let change: MemberChange = decode(&m.payload).map_err(bad)?;
        match self.raft(m.group_id) {
            Ok(raft) => {
                // A quiet group's leader restarts its timers for the new member's catch-up.
                self.node.wake(m.group_id);
                reply(crate::repair::change::apply(&raft, m.group_id, change).await)
            }
            Err(e) => reply::<(), _>(Err(e)),
        }
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        match self.raft(m.group_id) {
            Ok(raft) => {
                self.node.wake(m.group_id);
                reply(self.node.linearize(&raft, m.group_id).await)
            }
            Err(e) => reply::<u64, _>(Err(e)),
        }
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        let caller = req.extensions().get::<Identity>().cloned();
        let ping = req.into_inner();
        if let Some(who) = caller
            && !speaks_for(&self.node, &who, ping.from)
        {
            return Err(Status::permission_denied(format!(
                "identity `{who}` may not ping as node {}",
                ping.from
            )));
        }
        Ok(Response::new(self.node.on_ping(&ping)))
    }
}
