//! The node-local attach API (`NodeService`): attach, detach, list and resize this
//! node's kernel exposures of volumes, through the attach manager in `frontend::attach`.

use std::sync::Arc;

use cairn_proto::cairn::v1 as pb;
use pb::Frontend;
use pb::node_service_server::{NodeService, NodeServiceServer};
use tonic::{Request, Response, Status};

use crate::frontend::attach::AttachManager;
use crate::{Error, Result};

/// The gRPC face of the attach manager.
#[derive(Clone)]
pub struct NodeServiceImpl {
    manager: Arc<AttachManager>,
}

impl NodeServiceImpl {
    pub fn new(manager: Arc<AttachManager>) -> Self {
        NodeServiceImpl { manager }
    }

    pub fn into_server(self) -> NodeServiceServer<Self> {
        NodeServiceServer::new(self)
    }
}

fn required_volume(volume: &str) -> Result<&str> {
    if volume.is_empty() {
        return Err(Error::invalid("volume", "must not be empty"));
    }
    Ok(volume)
}

#[tonic::async_trait]
impl NodeService for NodeServiceImpl {
    #[tracing::instrument(skip_all, err, fields(volume = %req.get_ref().volume, frontend = req.get_ref().frontend, readonly = req.get_ref().readonly, generation = req.get_ref().generation, device))]
    async fn attach_volume(
        &self,
        req: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::AttachVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = required_volume(&req.volume)?;
        let frontend = Frontend::try_from(req.frontend).map_err(|_| {
            Error::invalid("frontend", format!("unknown frontend {}", req.frontend))
        })?;
        let attachment = self
            .manager
            .attach(volume, frontend, req.readonly, req.generation)
            .await?;
        tracing::Span::current().record("device", attachment.device_path.as_str());
        Ok(Response::new(pb::AttachVolumeResponse {
            attachment: Some(attachment),
        }))
    }

    #[tracing::instrument(skip_all, err, fields(volume = %req.get_ref().volume))]
    async fn detach_volume(
        &self,
        req: Request<pb::DetachVolumeRequest>,
    ) -> Result<Response<pb::DetachVolumeResponse>, Status> {
        self.manager
            .detach(required_volume(&req.get_ref().volume)?)
            .await?;
        Ok(Response::new(pb::DetachVolumeResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_attachments(
        &self,
        _req: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        Ok(Response::new(pb::ListAttachmentsResponse {
            attachments: self.manager.list(),
        }))
    }

    #[tracing::instrument(skip_all, err, fields(volume = %req.get_ref().volume, device))]
    async fn refresh_size(
        &self,
        req: Request<pb::RefreshSizeRequest>,
    ) -> Result<Response<pb::RefreshSizeResponse>, Status> {
        let attachment = self
            .manager
            .refresh_size(required_volume(&req.get_ref().volume)?)
            .await?;
        tracing::Span::current().record("device", attachment.device_path.as_str());
        Ok(Response::new(pb::RefreshSizeResponse {
            attachment: Some(attachment),
        }))
    }
}
