//! The node-local attach API (`NodeService`): attach, detach, list and resize this
//! node's kernel exposures of volumes, through the attach manager in `frontend::attach`.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use pb::Frontend;
use pb::node_service_server::{NodeService, NodeServiceServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::frontend::attach::AttachManager;
use crate::{Error, Result};

/// How long a call waits for attachment recovery before it is told to retry.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(5);

/// The gRPC face of the attach manager.
#[derive(Clone)]
pub struct NodeServiceImpl {
    manager: Arc<AttachManager>,
    /// True once the attachments the previous process left are recovered: until then the
    /// manager's table is incomplete, and an attach could race the recovery of the same volume.
    recovered: watch::Receiver<bool>,
}

impl NodeServiceImpl {
    /// Over a manager whose recovery is done (or never needed).
    pub fn new(manager: Arc<AttachManager>) -> Self {
        Self::gated(manager, watch::channel(true).1)
    }

    /// Over a manager still recovering: calls wait for `recovered` to turn true, up to
    /// `RECOVERY_WAIT`, then get UNAVAILABLE (CSI sidecars and the kubelet retry).
    pub fn gated(manager: Arc<AttachManager>, recovered: watch::Receiver<bool>) -> Self {
        NodeServiceImpl { manager, recovered }
    }

    async fn recovered(&self) -> Result<()> {
        let mut rx = self.recovered.clone();
        match tokio::time::timeout(RECOVERY_WAIT, rx.wait_for(|done| *done)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Unavailable(
                "attachment recovery ended without finishing: storaged is stopping".into(),
            )),
            Err(_) => Err(Error::Unavailable(format!(
                "storaged is still recovering the attachments its previous process left \
                 (waited {RECOVERY_WAIT:?}): retry"
            ))),
        }
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
        self.recovered().await?;
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
        let volume = required_volume(&req.get_ref().volume)?;
        self.recovered().await?;
        self.manager.detach(volume).await?;
        Ok(Response::new(pb::DetachVolumeResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_attachments(
        &self,
        _req: Request<pb::ListAttachmentsRequest>,
    ) -> Result<Response<pb::ListAttachmentsResponse>, Status> {
        self.recovered().await?;
        Ok(Response::new(pb::ListAttachmentsResponse {
            attachments: self.manager.list(),
        }))
    }

    #[tracing::instrument(skip_all, err, fields(volume = %req.get_ref().volume, device))]
    async fn refresh_size(
        &self,
        req: Request<pb::RefreshSizeRequest>,
    ) -> Result<Response<pb::RefreshSizeResponse>, Status> {
        let volume = required_volume(&req.get_ref().volume)?;
        self.recovered().await?;
        let attachment = self.manager.refresh_size(volume).await?;
        tracing::Span::current().record("device", attachment.device_path.as_str());
        Ok(Response::new(pb::RefreshSizeResponse {
            attachment: Some(attachment),
        }))
    }
}
