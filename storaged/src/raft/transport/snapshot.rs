//! Outbound snapshots: a group's state streamed to a lagging peer page by page, at the
//! node's rebuild rate; only a stream whose final message says `last` is installed there.

use cairn_proto::cairn::v1::SnapshotChunk;
use openraft::errors::{NetworkError, RPCError};
use openraft::raft::SnapshotResponse;
use tokio_stream::wrappers::ReceiverStream;

use super::unary::Kind;
use super::{PeerConn, Snapshot, TypeConfig, Vote, encode, unreachable};
use crate::raft::META_GROUP;
use crate::raft::resume::{HeldRange, Resumed};

/// How long the target may take to list what it holds: it reads and hashes its partial
/// spool, at most `resume::MAX_HELD` ranges (64 GiB, a few minutes at SHA-256's speed).
const HELD_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl PeerConn {
    /// The chunk ranges the target holds from an interrupted transfer of this group;
    /// none when it cannot say (a node from before resumable transfers, or an error).
    async fn held(&self, vote: &Vote) -> Vec<HeldRange> {
        let Ok(payload) = encode(vote) else {
            return Vec::new();
        };
        let r = match self.send(Kind::SnapshotHeld, payload, HELD_TTL).await {
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => return Vec::new(),
            Ok(r) => self.reply::<Vec<HeldRange>>(r),
            Err(e) => Err(e),
        };
        r.unwrap_or_else(|e| {
            tracing::info!(group = self.group, target = self.target, error = %e, "no held ranges from the target: sending the whole snapshot");
            Vec::new()
        })
    }

    /// Streams a snapshot page by page; a read error here ends it early and the
    /// receiver drops what it spooled.
    pub(super) async fn stream_snapshot(
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
        let group = self.group;
        // A volume's snapshot is rebuild traffic: it waits for one of the node's stream
        // permits and goes at the node's rate (the catalogue's small one goes at once).
        let budget = if group == META_GROUP {
            None
        } else {
            Some(
                self.rebuilds
                    .begin(group, self.target, snapshot.snapshot.estimate())
                    .await,
            )
        };
        // A volume's transfer resumes: ranges the target holds with the same digest are
        // named, not sent (`resume.rs`).
        let held = if group == META_GROUP {
            Vec::new()
        } else {
            self.held(&vote).await
        };
        if !held.is_empty() {
            let bytes: u64 = held.iter().map(|h| h.bytes).sum();
            tracing::info!(
                group,
                target = self.target,
                ranges = held.len(),
                bytes,
                "resuming a snapshot transfer: the target holds part of it"
            );
        }
        let mut data = Resumed::new(snapshot.snapshot, &held);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let target = self.target;
        let produce = async move {
            let (mut sent, mut skipped) = (0u64, 0u64);
            loop {
                let page = data.next_page().await?;
                let last = page.is_none();
                let page = match page {
                    Some(p) => bytes::Bytes::from(encode(&p)?),
                    None => Default::default(),
                };
                let skip = data.take_skipped();
                sent += page.len() as u64;
                skipped += skip;
                if let Some(b) = &budget {
                    b.skipped(skip);
                    b.send(page.len() as u64).await;
                }
                if last && group != META_GROUP {
                    tracing::info!(group, target, sent, skipped, "sent snapshot");
                }
                let msg = SnapshotChunk {
                    group_id: group,
                    header: header.take().unwrap_or_default().into(),
                    page,
                    last,
                };
                // A closed stream means the call has already ended; it reports why.
                if tx.send(msg).await.is_err() || last {
                    return Ok::<_, std::io::Error>(());
                }
            }
        };
        let attempt = self.health.attempt();
        let (reply, produced) = tokio::join!(
            client.install_snapshot(super::addressed(ReceiverStream::new(rx), self.target)),
            produce
        );
        attempt.observe(&reply);
        produced.map_err(net)?;
        self.reply(reply)
    }
}
