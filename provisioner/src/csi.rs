//! The CSI controller client over a Unix socket: lazy connection, per-call timeout and
//! latency metrics, plus the Kubernetes → CSI mapping of access modes and capabilities.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_proto::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::metrics::{CsiLabels, Metrics};

/// Default deadline of one CSI call (upstream sidecars use 10s to 60s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A CSI controller endpoint.
#[derive(Clone)]
pub struct CsiClient {
    channel: Channel,
    driver: String,
    timeout: Duration,
    metrics: Metrics,
    caps: std::sync::Arc<OnceCell<Vec<i32>>>,
}

/// Parses `unix:///path/csi.sock` (or a bare path) into the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    cairn_proto::uds::socket_path(endpoint)
        .map_err(|e| Error::Config(format!("--csi-endpoint: {e}")))
}

impl CsiClient {
    /// Builds a client that connects on first use and reconnects after failures, so a driver
    /// that is down at start (or restarts) is only a retried error.
    pub fn connect_lazy(endpoint: &str, driver: &str, metrics: Metrics) -> Result<Self> {
        let path = socket_path(endpoint)?;
        let channel = cairn_proto::uds::lazy_channel(path, Duration::from_secs(5));
        Ok(CsiClient {
            channel,
            driver: driver.to_string(),
            timeout: DEFAULT_TIMEOUT,
            metrics,
            caps: Default::default(),
        })
    }

    /// Overrides the per-call deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel.clone())
    }

    async fn call<T, F>(&self, method: &'static str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let out = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded("CSI call timed out")),
        };
        let code = match &out {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics
            .csi_ops
            .get_or_create(&CsiLabels {
                driver_name: self.driver.clone(),
                method_name: method.to_string(),
                grpc_status_code: code,
            })
            .observe(start.elapsed().as_secs_f64());
        out.map(|r| r.into_inner())
            .map_err(|s| Error::csi(method, s))
    }

    /// Identity.GetPluginInfo: the driver's name.
    pub async fn driver_name(&self) -> Result<String> {
        let mut id = IdentityClient::new(self.channel.clone());
        let r = self
            .call(
                "/csi.v1.Identity/GetPluginInfo",
                id.get_plugin_info(csi::GetPluginInfoRequest {}),
            )
            .await?;
        Ok(r.name)
    }

    /// Identity.Probe: Ok(true) when ready (an unset `ready` means ready, per the spec).
    pub async fn probe(&self) -> Result<bool> {
        let mut id = IdentityClient::new(self.channel.clone());
        let r = self
            .call("/csi.v1.Identity/Probe", id.probe(csi::ProbeRequest {}))
            .await?;
        Ok(r.ready.unwrap_or(true))
    }

    /// ControllerGetCapabilities, cached after the first success.
    pub async fn has_capability(
        &self,
        cap: csi::controller_service_capability::rpc::Type,
    ) -> Result<bool> {
        let caps = self
            .caps
            .get_or_try_init(|| async {
                let r = self
                    .call(
                        "/csi.v1.Controller/ControllerGetCapabilities",
                        self.controller()
                            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}),
                    )
                    .await?;
                Ok::<_, Error>(
                    r.capabilities
                        .into_iter()
                        .filter_map(|c| {
                            c.r#type
                                .map(|csi::controller_service_capability::Type::Rpc(rpc)| {
                                    rpc.r#type
                                })
                        })
                        .collect(),
                )
            })
            .await?;
        Ok(caps.contains(&(cap as i32)))
    }

    /// CreateVolume.
    pub async fn create_volume(&self, req: csi::CreateVolumeRequest) -> Result<csi::Volume> {
        let r = self
            .call(
                "/csi.v1.Controller/CreateVolume",
                self.controller().create_volume(req),
            )
            .await?;
        r.volume.ok_or_else(|| {
            Error::csi(
                "/csi.v1.Controller/CreateVolume",
                tonic::Status::internal("no volume in response"),
            )
        })
    }

    /// DeleteVolume.
    pub async fn delete_volume(&self, volume_id: &str) -> Result<()> {
        let req = csi::DeleteVolumeRequest {
            volume_id: volume_id.to_string(),
            ..Default::default()
        };
        self.call(
            "/csi.v1.Controller/DeleteVolume",
            self.controller().delete_volume(req),
        )
        .await
        .map(|_| ())
    }

    /// ControllerPublishVolume: the publish_context.
    pub async fn publish(
        &self,
        req: csi::ControllerPublishVolumeRequest,
    ) -> Result<std::collections::HashMap<String, String>> {
        let r = self
            .call(
                "/csi.v1.Controller/ControllerPublishVolume",
                self.controller().controller_publish_volume(req),
            )
            .await?;
        Ok(r.publish_context)
    }

    /// ControllerUnpublishVolume.
    pub async fn unpublish(&self, volume_id: &str, node_id: &str) -> Result<()> {
        let req = csi::ControllerUnpublishVolumeRequest {
            volume_id: volume_id.to_string(),
            node_id: node_id.to_string(),
            ..Default::default()
        };
        self.call(
            "/csi.v1.Controller/ControllerUnpublishVolume",
            self.controller().controller_unpublish_volume(req),
        )
        .await
        .map(|_| ())
    }

    /// ControllerExpandVolume.
    pub async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        self.call(
            "/csi.v1.Controller/ControllerExpandVolume",
            self.controller().controller_expand_volume(req),
        )
        .await
    }

    /// ControllerGetVolume: the volume's condition (`None` when the driver gives none).
    pub async fn volume_condition(&self, volume_id: &str) -> Result<Option<csi::VolumeCondition>> {
        let req = csi::ControllerGetVolumeRequest {
            volume_id: volume_id.to_string(),
        };
        let r = self
            .call(
                "/csi.v1.Controller/ControllerGetVolume",
                self.controller().controller_get_volume(req),
            )
            .await?;
        Ok(r.status.and_then(|s| s.volume_condition))
    }

    /// GetCapacity.
    pub async fn get_capacity(
        &self,
        req: csi::GetCapacityRequest,
    ) -> Result<csi::GetCapacityResponse> {
        self.call(
            "/csi.v1.Controller/GetCapacity",
            self.controller().get_capacity(req),
        )
        .await
    }
}

/// Maps one Kubernetes access mode to CSI, as external-provisioner does when the driver
/// advertises SINGLE_NODE_MULTI_WRITER.
pub fn access_mode(k8s: &str, single_node_multi_writer: bool) -> Result<Mode> {
    Ok(match k8s {
        "ReadWriteOnce" if single_node_multi_writer => Mode::SingleNodeMultiWriter,
        "ReadWriteOnce" => Mode::SingleNodeWriter,
        "ReadWriteOncePod" if single_node_multi_writer => Mode::SingleNodeSingleWriter,
        "ReadWriteOncePod" => Mode::SingleNodeWriter,
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        other => return Err(Error::Invalid(format!("unsupported access mode {other:?}"))),
    })
}

/// One VolumeCapability per access mode (CreateVolume), or the first one (publish/expand).
pub fn capabilities(
    access_modes: &[String],
    block: bool,
    fs_type: &str,
    mount_flags: &[String],
    single_node_multi_writer: bool,
) -> Result<Vec<csi::VolumeCapability>> {
    if access_modes.is_empty() {
        return Err(Error::Invalid("no access modes".into()));
    }
    access_modes
        .iter()
        .map(|m| {
            let mode = access_mode(m, single_node_multi_writer)?;
            let access_type = if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume {
                    fs_type: fs_type.to_string(),
                    mount_flags: mount_flags.to_vec(),
                    volume_mount_group: String::new(),
                })
            };
            Ok(csi::VolumeCapability {
                access_mode: Some(AccessMode { mode: mode as i32 }),
                access_type: Some(access_type),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/run/csi.sock").unwrap(),
            PathBuf::from("/run/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }

    #[test]
    fn access_modes_follow_upstream() {
        assert_eq!(
            access_mode("ReadWriteOnce", true).unwrap(),
            Mode::SingleNodeMultiWriter
        );
        assert_eq!(
            access_mode("ReadWriteOnce", false).unwrap(),
            Mode::SingleNodeWriter
        );
        assert_eq!(
            access_mode("ReadWriteOncePod", true).unwrap(),
            Mode::SingleNodeSingleWriter
        );
        assert_eq!(
            access_mode("ReadWriteMany", true).unwrap(),
            Mode::MultiNodeMultiWriter
        );
        assert!(access_mode("Sideways", true).is_err());
        let caps = capabilities(
            &["ReadWriteOnce".into()],
            false,
            "ext4",
            &["noatime".into()],
            true,
        )
        .unwrap();
        assert!(
            matches!(&caps[0].access_type, Some(AccessType::Mount(m)) if m.fs_type == "ext4" && m.mount_flags == ["noatime"])
        );
    }
}
