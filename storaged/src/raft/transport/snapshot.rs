//! Outbound snapshots: a group's state streamed to a lagging peer page by page, at the
//! node's rebuild rate; only a stream whose final message says `last` is installed there.

use cairn_proto::cairn::v1::SnapshotChunk;
use openraft::errors::{NetworkError, RPCError};
use openraft::raft::SnapshotResponse;
use tokio_stream::wrappers::ReceiverStream;

use super::{PeerConn, Snapshot, TypeConfig, Vote, encode, unreachable};
use crate::raft::META_GROUP;

impl PeerConn {
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
        let mut data = snapshot.snapshot;
        let group = self.group;
        // A volume's snapshot is rebuild traffic: it waits for one of the node's stream
        // permits and goes at the node's rate (the catalogue's small one goes at once).
        let budget = if group == META_GROUP {
            None
        } else {
            Some(
                self.rebuilds
                    .begin(group, self.target, data.estimate())
                    .await,
            )
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let produce = async move {
            loop {
                let page = data.next_page().await?;
                let last = page.is_none();
                let page = match page {
                    Some(p) => bytes::Bytes::from(encode(&p)?),
                    None => Default::default(),
                };
                if let Some(b) = &budget {
                    b.send(page.len() as u64).await;
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
