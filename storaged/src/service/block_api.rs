//! Block I/O service: read, write, discard and flush on a replicated volume,
//! served by the volume group's leader (others answer with a leader hint).

use std::sync::Arc;

use cairn_proto::cairn::v1 as pb;
use pb::block_service_server::BlockService;
use tonic::{Request, Response, Status};

use crate::node::StorageNode;
use crate::raft::WriteId;
use crate::service::validate;

pub struct BlockApi {
    pub node: Arc<StorageNode>,
}

#[tonic::async_trait]
impl BlockService for BlockApi {
    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        let data = self
            .node
            .io()
            .read(&r.volume, r.offset, r.length as u64)
            .await?;
        Ok(Response::new(pb::ReadResponse { data: data.into() }))
    }

    async fn write(
        &self,
        req: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        let id = WriteId::from_wire(r.client_id, r.seq, r.first_incomplete);
        self.node
            .io()
            .write(&r.volume, r.offset, r.data, r.generation, id)
            .await?;
        Ok(Response::new(pb::WriteResponse {}))
    }

    async fn discard(
        &self,
        req: Request<pb::DiscardRequest>,
    ) -> Result<Response<pb::DiscardResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        let id = WriteId::from_wire(r.client_id, r.seq, r.first_incomplete);
        self.node
            .io()
            .discard(&r.volume, r.offset, r.length, r.generation, id)
            .await?;
        Ok(Response::new(pb::DiscardResponse {}))
    }

    async fn flush(
        &self,
        req: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        self.node.io().flush(&r.volume, r.generation).await?;
        Ok(Response::new(pb::FlushResponse {}))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume, target = %req.get_ref().target))]
    async fn copy_to(
        &self,
        req: Request<pb::CopyToRequest>,
    ) -> Result<Response<pb::CopyToResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        validate::name("target", &r.target)?;
        if r.volume == r.target {
            return Err(crate::Error::invalid("target", "must differ from `volume`").into());
        }
        let bytes_copied = crate::volume::copy::copy_to(&self.node, &r.volume, &r.target).await?;
        Ok(Response::new(pb::CopyToResponse { bytes_copied }))
    }

    #[tracing::instrument(skip_all, fields(volume = %req.get_ref().volume))]
    async fn fence(
        &self,
        req: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceResponse>, Status> {
        let r = req.into_inner();
        validate::name("volume", &r.volume)?;
        let generation = self.node.io().fence(&r.volume).await?;
        Ok(Response::new(pb::FenceResponse { generation }))
    }
}
