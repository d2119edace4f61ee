//! Inbound Raft transport: decodes a group's message and hands it to the local
//! Raft of that group; a group not hosted here answers an error the sender backs off on.

use std::io::Cursor;
use std::sync::Arc;

use cairn_proto::cairn::v1::raft_service_server::RaftService;
use cairn_proto::cairn::v1::{RaftMessage, RaftReply};
use tonic::{Request, Response, Status};

use crate::node::StorageNode;
use crate::raft::{Raft, Snapshot, SnapshotMeta, Vote, decode, encode};

pub struct RaftApi {
    pub node: Arc<StorageNode>,
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftReply>, Status> {
    Ok(Response::new(match r {
        Ok(v) => RaftReply {
            payload: encode(&v)
                .map_err(|e| Status::internal(e.to_string()))?
                .into(),
            error: String::new(),
        },
        Err(e) => RaftReply {
            payload: Default::default(),
            error: e.to_string(),
        },
    }))
}

impl RaftApi {
    fn raft(&self, group: u64) -> Result<Raft, String> {
        self.node.group(group).ok_or_else(|| {
            format!(
                "group {group} is not hosted on node {} (yet)",
                self.node.cfg.id
            )
        })
    }
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("payload: {e}"))
}

#[tonic::async_trait]
impl RaftService for RaftApi {
    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        let rpc = decode(&m.payload).map_err(bad)?;
        match self.raft(m.group_id) {
            Ok(raft) => reply(raft.append_entries(rpc).await),
            Err(e) => reply::<(), _>(Err(e)),
        }
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        let rpc = decode(&m.payload).map_err(bad)?;
        match self.raft(m.group_id) {
            Ok(raft) => reply(raft.vote(rpc).await),
            Err(e) => reply::<(), _>(Err(e)),
        }
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        let (vote, meta, data): (Vote, SnapshotMeta, bytes::Bytes) =
            decode(&m.payload).map_err(bad)?;
        match self.raft(m.group_id) {
            Ok(raft) => {
                let snap = Snapshot {
                    meta,
                    snapshot: Cursor::new(data.to_vec()),
                };
                reply(raft.install_full_snapshot(vote, snap).await)
            }
            Err(e) => reply::<(), _>(Err(e)),
        }
    }

    async fn group_status(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        reply::<_, String>(Ok(self.node.group_status(m.group_id)))
    }

    async fn read_index(&self, req: Request<RaftMessage>) -> Result<Response<RaftReply>, Status> {
        let m = req.into_inner();
        match self.raft(m.group_id) {
            Ok(raft) => reply(self.node.linearize(&raft, m.group_id).await),
            Err(e) => reply::<u64, _>(Err(e)),
        }
    }
}
