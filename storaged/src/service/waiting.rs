//! The Raft service a node serves while it decides whether it may start (`identity::admit`):
//! it answers `GroupStatus` as an empty node and refuses every other Raft call.
//!
//! Empty initial voters wait for each other's word before any of them bootstraps, so each
//! must answer the others' probe before its own Raft runs; nothing else is served yet.

use cairn_proto::cairn::v1::raft_service_server::RaftService;
use cairn_proto::cairn::v1::{PingReply, PingRequest, RaftMessage, RaftReply, SnapshotChunk};
use tonic::{Request, Response, Status, Streaming};

use crate::node::GroupStatus;
use crate::service::raft_api::ReplyStream;

/// Answers as a node that holds no Raft state yet.
pub struct WaitingRoom;

fn not_yet() -> Status {
    Status::unavailable("this node is deciding whether it may start (identity probe)")
}

#[tonic::async_trait]
impl RaftService for WaitingRoom {
    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        _: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        Err(not_yet())
    }

    async fn append_entries(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn pre_vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn install_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn snapshot_held(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn group_status(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let payload = crate::raft::encode(&GroupStatus::default())
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftReply {
            payload: payload.into(),
            ..Default::default()
        }))
    }

    async fn read_index(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn transfer_leader(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }

    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Err(not_yet())
    }

    async fn change_members(&self, _: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        Err(not_yet())
    }
}
