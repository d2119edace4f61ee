//! Unary Raft calls (AppendEntries, Vote, PreVote, TransferLeader): one gRPC call each,
//! bounded by a deadline, whose outcome also tells the peer's reachability.

use std::time::Duration;

use cairn_proto::cairn::v1::{RaftMessage, RaftReply};
use openraft::errors::{NetworkError, RPCError};

use super::{Msg, PeerConn, TypeConfig, addressed, decode_reply, status_error, unreachable};

/// How long a TransferLeader may take: the new leader first waits (up to openraft's
/// `election_timeout_min`, 300 ms here) until its log holds the old leader's last entry.
pub(super) const TRANSFER_TTL: Duration = Duration::from_millis(1500);

pub(super) enum Kind {
    Append,
    Vote,
    PreVote,
    TransferLeader,
    SnapshotHeld,
}

impl PeerConn {
    /// Sends one encoded message; the reply is the remote Raft's encoded `Result`.
    pub(super) async fn call<Resp>(
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
    pub(super) async fn send(
        &self,
        kind: Kind,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> Result<Result<tonic::Response<RaftReply>, tonic::Status>, RPCError<TypeConfig>> {
        let mut client = self
            .channels
            .client(&self.addr)
            .map_err(|e| RPCError::Unreachable(unreachable(e)))?;
        let msg = addressed(
            RaftMessage {
                group_id: self.group,
                payload: payload.into(),
            },
            self.target,
        );
        let attempt = self.health.attempt();
        let fut = async {
            match kind {
                Kind::Append => client.append_entries(msg).await,
                Kind::Vote => client.vote(msg).await,
                Kind::PreVote => client.pre_vote(msg).await,
                Kind::TransferLeader => client.transfer_leader(msg).await,
                Kind::SnapshotHeld => client.snapshot_held(msg).await,
            }
        };
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                let why = format!("no reply from node {} in {ttl:?}", self.target);
                attempt.failed(&why);
                Err(RPCError::Network(NetworkError::new(&Msg(why))))
            }
            Ok(r) => {
                attempt.observe(&r);
                Ok(r)
            }
        }
    }

    /// The remote Raft's encoded `Result`, or why there is none.
    pub(super) fn reply<Resp>(
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
}
