//! CSI Identity service: plugin name and version, capabilities, and a Probe that
//! reports not-ready while storaged cannot be reached.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::csi::v1::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
    identity_server::Identity, plugin_capability,
};
use tonic::Request;

use crate::error::Result;
use crate::params::DRIVER_NAME;
use crate::rpc::{RpcResult, reply};
use crate::storaged::{NodeBackend, VolumeBackend};

/// How long Probe waits for storaged before answering not-ready.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Identity service; `volumes` is set when the controller runs, `node` when the node plugin does.
pub struct IdentityService {
    pub volumes: Option<Arc<dyn VolumeBackend>>,
    pub node: Option<Arc<dyn NodeBackend>>,
    pub controller: bool,
}

impl IdentityService {
    fn capabilities(&self) -> Vec<PluginCapability> {
        use plugin_capability::{Service, Type, VolumeExpansion, service, volume_expansion};
        let mut services = vec![service::Type::VolumeAccessibilityConstraints];
        if self.controller {
            services.insert(0, service::Type::ControllerService);
        }
        let mut caps: Vec<PluginCapability> = services
            .into_iter()
            .map(|t| PluginCapability {
                r#type: Some(Type::Service(Service { r#type: t as i32 })),
            })
            .collect();
        caps.push(PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        });
        caps
    }

    async fn ready(&self) -> Result<bool> {
        if let Some(v) = &self.volumes {
            match tokio::time::timeout(PROBE_TIMEOUT, v.cluster_status()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "probe: storaged cluster unreachable");
                    return Ok(false);
                }
                Err(_) => return Ok(false),
            }
        }
        if let Some(n) = &self.node {
            match tokio::time::timeout(PROBE_TIMEOUT, n.list_attachments()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "probe: local storaged unreachable");
                    return Ok(false);
                }
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> RpcResult<GetPluginInfoResponse> {
        reply(Ok(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> RpcResult<GetPluginCapabilitiesResponse> {
        reply(Ok(GetPluginCapabilitiesResponse {
            capabilities: self.capabilities(),
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> RpcResult<ProbeResponse> {
        reply(
            self.ready()
                .await
                .map(|ready| ProbeResponse { ready: Some(ready) }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storaged::fake::FakeVolumes;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn info_capabilities_and_probe() {
        let fake = Arc::new(FakeVolumes::with_nodes(&[("node-1", None)]));
        let id = IdentityService {
            volumes: Some(fake.clone()),
            node: None,
            controller: true,
        };
        let info = id
            .get_plugin_info(Request::new(GetPluginInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "csi.cairn.dev");
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
        let caps = id
            .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        assert_eq!(caps.len(), 3);
        async fn probe(id: &IdentityService) -> Option<bool> {
            id.probe(Request::new(ProbeRequest {}))
                .await
                .unwrap()
                .into_inner()
                .ready
        }
        assert_eq!(probe(&id).await, Some(true));
        fake.down.store(true, Ordering::SeqCst);
        assert_eq!(probe(&id).await, Some(false));
    }
}
