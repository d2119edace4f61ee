//! The volume I/O router: a block request is served on this node when it leads the volume's
//! group, else forwarded to the leader's `BlockService` over the node's own peer channels.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{WriteIds, WriteTicket};
use cairn_proto::cairn::v1 as pb;
use futures::FutureExt;
use futures::future::BoxFuture;
use pb::block_service_client::BlockServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::error::LEADER_HINT_KEY;
use crate::frontend::BlockDevice;
use crate::node::StorageNode;
use crate::raft::WriteId;
use crate::{Error, Result};

/// How long a routed request may take (redirects and elections included), and one forward.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub deadline: Duration,
    pub attempt: Duration,
}

/// Block I/O: an election (300–600 ms, longer under load) fits well within the deadline.
pub const IO_LIMITS: Limits = Limits {
    deadline: Duration::from_secs(8),
    attempt: Duration::from_secs(3),
};
/// The longest wait between two tries while a group has no leader.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// The pause before following a redirect, so hints that bounce never spin.
const REDIRECT_PAUSE: Duration = Duration::from_millis(5);
/// The largest block message a forward sends or accepts (a 1 MiB request plus framing).
const MAX_MESSAGE: usize = 8 << 20;

/// Routes block requests for any volume; cheap to clone. Each `new` router is one writer
/// (`cairn_client::WriteIds`): its writes and discards are applied at most once.
#[derive(Clone)]
pub struct VolumeIo {
    node: Arc<StorageNode>,
    writes: Arc<WriteIds>,
    limits: Limits,
}

/// What one try of a request leads to.
enum Step<T> {
    Done(T),
    Fail(Error),
    /// The group's leader is at this address.
    Redirect(String),
    /// No leader to ask now (an election, a lost quorum, a leader not answering).
    Wait(Error),
}

/// What a write-identity request changes: data written, or a range discarded.
enum Change {
    Write(Bytes),
    Discard(u64),
}

/// Where the next try goes.
enum Hop {
    Local,
    Leader(String),
}

fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HINT_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().trim_start_matches("http://").to_string())
        .filter(|s| !s.is_empty())
}

impl VolumeIo {
    pub fn new(node: Arc<StorageNode>) -> Self {
        VolumeIo {
            node,
            writes: Arc::new(WriteIds::new()),
            limits: IO_LIMITS,
        }
    }

    /// Waits up to `deadline` for a leader (an election, a lost quorum) before a request
    /// fails, resending under the request's one write identity meanwhile.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.limits.deadline = deadline;
        self
    }

    pub fn node(&self) -> &Arc<StorageNode> {
        &self.node
    }

    /// `volume` as a frontend's block device, writing as the holder of publish
    /// `generation` (0: unfenced).
    pub fn device(&self, volume: &str, generation: u64) -> Arc<dyn BlockDevice> {
        Arc::new(VolumeDevice {
            io: self.clone(),
            name: volume.to_string(),
            generation: AtomicU64::new(generation),
        })
    }

    pub async fn read(&self, volume: &str, offset: u64, length: u32) -> Result<Vec<u8>> {
        let req = pb::ReadRequest {
            volume: volume.to_string(),
            offset,
            length,
        };
        self.route(
            volume,
            self.limits,
            || self.node.io().read(volume, offset, u64::from(length)),
            |mut c| {
                let req = req.clone();
                async move { Ok(c.read(req).await?.into_inner().data.to_vec()) }
            },
        )
        .await
    }

    /// Writes under one write identity for every try, here or forwarded, so a try whose
    /// outcome was unknown, made again, takes effect once.
    pub async fn write(
        &self,
        volume: &str,
        offset: u64,
        data: Bytes,
        generation: u64,
    ) -> Result<()> {
        self.change(volume, offset, Change::Write(data), generation)
            .await
    }

    /// Discards like `write`: one write identity for every try.
    pub async fn discard(
        &self,
        volume: &str,
        offset: u64,
        length: u64,
        generation: u64,
    ) -> Result<()> {
        self.change(volume, offset, Change::Discard(length), generation)
            .await
    }

    async fn change(
        &self,
        volume: &str,
        offset: u64,
        change: Change,
        generation: u64,
    ) -> Result<()> {
        let ticket = self.writes.begin(volume).await;
        self.route(
            volume,
            self.limits,
            || {
                let (id, io) = (Some(write_id(&ticket)), self.node.io());
                match &change {
                    Change::Write(data) => io
                        .write(volume, offset, data.clone(), generation, id)
                        .boxed(),
                    Change::Discard(length) => {
                        io.discard(volume, offset, *length, generation, id).boxed()
                    }
                }
            },
            |mut c| {
                let (volume, client_id) = (volume.to_string(), ticket.client_id());
                let (seq, first_incomplete) = (ticket.seq(), ticket.first_incomplete());
                match &change {
                    Change::Write(data) => {
                        let req = pb::WriteRequest {
                            volume,
                            offset,
                            data: data.clone(),
                            generation,
                            client_id,
                            seq,
                            first_incomplete,
                        };
                        async move { c.write(req).await.map(|_| ()) }.boxed()
                    }
                    Change::Discard(length) => {
                        let req = pb::DiscardRequest {
                            volume,
                            offset,
                            length: *length,
                            generation,
                            client_id,
                            seq,
                            first_incomplete,
                        };
                        async move { c.discard(req).await.map(|_| ()) }.boxed()
                    }
                }
            },
        )
        .await
    }

    pub async fn flush(&self, volume: &str, generation: u64) -> Result<()> {
        let req = pb::FlushRequest {
            volume: volume.to_string(),
            generation,
        };
        self.route(
            volume,
            self.limits,
            || self.node.io().flush(volume, generation),
            |mut c| {
                let req = req.clone();
                async move { c.flush(req).await.map(|_| ()) }
            },
        )
        .await
    }

    /// Fences `volume`'s group to the catalogue's publishes, on the group's leader;
    /// returns the fence's generation.
    pub async fn fence(&self, volume: &str) -> Result<u64> {
        let req = pb::FenceRequest {
            volume: volume.to_string(),
        };
        self.route(
            volume,
            self.limits,
            || self.node.io().fence(volume),
            |mut c| {
                let req = req.clone();
                async move { Ok(c.fence(req).await?.into_inner().generation) }
            },
        )
        .await
    }

    /// Runs a request for `volume` where its group is led: `local` here, `remote` on the
    /// leader (whose `BlockService` serves it or answers with a hint, never forwarding on).
    /// Requests routed here are idempotent or deduplicated (writes and discards carry one
    /// write identity), so a try whose outcome is unknown is made again.
    pub async fn route<T, L, LF, R, RF>(
        &self,
        volume: &str,
        limits: Limits,
        local: L,
        remote: R,
    ) -> Result<T>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<T>>,
        R: Fn(BlockServiceClient<Channel>) -> RF,
        RF: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut hop = Hop::Local;
        loop {
            let step = match &hop {
                Hop::Local => self.local_step(local().await),
                Hop::Leader(addr) => {
                    let left = limits.deadline.saturating_sub(start.elapsed());
                    self.forward_step(addr, left.min(limits.attempt), &remote)
                        .await
                }
            };
            let last = match step {
                Step::Done(v) => return Ok(v),
                Step::Fail(e) => return Err(e),
                Step::Redirect(addr) => {
                    tracing::trace!(volume, leader = %addr, "block request redirected");
                    hop = Hop::Leader(addr);
                    tokio::time::sleep(REDIRECT_PAUSE).await;
                    None
                }
                Step::Wait(e) => {
                    tracing::debug!(volume, error = %e, "block request waits for a leader");
                    hop = Hop::Local;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(e)
                }
            };
            if start.elapsed() >= limits.deadline {
                let detail = last.map_or_else(|| "redirected".to_string(), |e| e.to_string());
                return Err(Error::Unavailable(format!(
                    "volume `{volume}`: no leader served the request within {:?}: {detail}",
                    limits.deadline
                )));
            }
        }
    }

    fn local_step<T>(&self, r: Result<T>) -> Step<T> {
        match r {
            Ok(v) => Step::Done(v),
            Err(Error::NotLeader {
                leader: Some(addr), ..
            }) if addr != self.node.cfg().addr => Step::Redirect(addr),
            Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_))) => Step::Wait(e),
            Err(e) => Step::Fail(e),
        }
    }

    async fn forward_step<T, R, RF>(&self, addr: &str, within: Duration, remote: &R) -> Step<T>
    where
        R: Fn(BlockServiceClient<Channel>) -> RF,
        RF: Future<Output = Result<T, Status>>,
    {
        let channel = match self.node.channels().get(addr) {
            Ok(c) => c,
            Err(e) => return Step::Fail(Error::Internal(e)),
        };
        let client = BlockServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let status = match tokio::time::timeout(within, remote(client)).await {
            Ok(Ok(v)) => return Step::Done(v),
            Ok(Err(status)) => status,
            Err(_) => {
                return Step::Wait(Error::Unavailable(format!(
                    "the leader at {addr} did not answer within {within:?}"
                )));
            }
        };
        after_forward(status, addr, &self.node.cfg().addr)
    }
}

/// A ticket's identity as of now (its low-water mark moves as older writes finish).
fn write_id(ticket: &WriteTicket) -> WriteId {
    WriteId {
        client: ticket.client_id(),
        seq: ticket.seq(),
        first_incomplete: ticket.first_incomplete(),
    }
}

/// What a leader's error answer (from `addr`, to this node at `me`) leads to: a redirect
/// on a hint, another try after an ambiguous failure, else the answer, its code kept.
fn after_forward<T>(status: Status, addr: &str, me: &str) -> Step<T> {
    match leader_hint(&status) {
        Some(hint) if hint != addr && hint != me => Step::Redirect(hint),
        Some(_) => Step::Wait(status.into()),
        None if matches!(
            status.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
        ) =>
        {
            Step::Wait(status.into())
        }
        None => Step::Fail(status.into()),
    }
}

/// A replicated volume as the frontends see it: every request goes through the router,
/// carrying the generation of the publish the node attached it under.
struct VolumeDevice {
    io: VolumeIo,
    name: String,
    generation: AtomicU64,
}

impl VolumeDevice {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

impl BlockDevice for VolumeDevice {
    fn size(&self) -> u64 {
        self.io.node.volume_size(&self.name).unwrap_or(0)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(self.io.read(&self.name, offset, len))
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.io.write(&self.name, offset, data, self.generation()))
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.io.discard(&self.name, offset, len, self.generation()))
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.io.flush(&self.name, self.generation()))
    }

    fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hinted(to: &str) -> Status {
        Error::NotLeader {
            group: 7,
            leader: Some(to.to_string()),
        }
        .into()
    }

    #[test]
    fn a_leaders_answer_keeps_its_code() {
        let sealed = Error::FailedPrecondition("`snapshot.s` holds a snapshot".into());
        match after_forward::<()>(sealed.into(), "b:1", "a:1") {
            Step::Fail(e) => assert_eq!(e.code(), Code::FailedPrecondition),
            _ => panic!("a refusal is final"),
        }
        match after_forward::<()>(Status::out_of_range("past the end"), "b:1", "a:1") {
            Step::Fail(e) => assert_eq!(e.code(), Code::OutOfRange),
            _ => panic!("a refusal is final"),
        }
    }

    #[test]
    fn hints_are_followed_and_ambiguous_failures_retried() {
        assert!(matches!(
            after_forward::<()>(hinted("c:1"), "b:1", "a:1"),
            Step::Redirect(to) if to == "c:1"
        ));
        // A hint back to this node or to the same leader: ask locally again, after a pause.
        assert!(matches!(
            after_forward::<()>(hinted("a:1"), "b:1", "a:1"),
            Step::Wait(_)
        ));
        assert!(matches!(
            after_forward::<()>(hinted("b:1"), "b:1", "a:1"),
            Step::Wait(_)
        ));
        assert!(matches!(
            after_forward::<()>(Status::unavailable("no quorum"), "b:1", "a:1"),
            Step::Wait(_)
        ));
    }
}
