//! The driver's view of storaged: `VolumeBackend` (cluster catalogue) and `NodeBackend`
//! (the node's own attach API), implemented for `cairn-client` and, in tests, by a fake.

use cairn_proto::cairn::v1 as pb;
use tonic::Status;

/// Cluster-wide volume calls (answered by the meta leader; the client follows hints).
#[tonic::async_trait]
pub trait VolumeBackend: Send + Sync + 'static {
    async fn create_volume(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status>;
    async fn delete_volume(&self, name: &str) -> Result<(), Status>;
    async fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, Status>;
    async fn get_volume(&self, name: &str) -> Result<pb::Volume, Status>;
    async fn list_volumes(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListVolumesResponse, Status>;
    async fn get_capacity(
        &self,
        req: pb::GetCapacityRequest,
    ) -> Result<pb::GetCapacityResponse, Status>;
    async fn publish_volume(&self, req: pb::PublishVolumeRequest) -> Result<pb::Volume, Status>;
    async fn unpublish_volume(&self, name: &str, node_name: &str) -> Result<(), Status>;
    async fn list_nodes(&self) -> Result<Vec<pb::Node>, Status>;
    async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status>;
    async fn create_snapshot(&self, name: &str, source: &str) -> Result<pb::Snapshot, Status> {
        let _ = (name, source);
        Err(Status::unimplemented("snapshots"))
    }
    async fn delete_snapshot(&self, name: &str) -> Result<(), Status> {
        let _ = name;
        Err(Status::unimplemented("snapshots"))
    }
    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        let _ = req;
        Err(Status::unimplemented("snapshots"))
    }
}

/// Node-local calls on this node's storaged.
#[tonic::async_trait]
pub trait NodeBackend: Send + Sync + 'static {
    async fn attach_volume(
        &self,
        req: pb::AttachVolumeRequest,
    ) -> Result<pb::NodeAttachment, Status>;
    async fn detach_volume(&self, volume: &str) -> Result<(), Status>;
    async fn list_attachments(&self) -> Result<Vec<pb::NodeAttachment>, Status>;
    async fn refresh_size(&self, volume: &str) -> Result<pb::NodeAttachment, Status>;
}

#[tonic::async_trait]
impl VolumeBackend for cairn_client::VolumeClient {
    async fn create_volume(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
        cairn_client::VolumeClient::create_volume(self, req).await
    }
    async fn delete_volume(&self, name: &str) -> Result<(), Status> {
        cairn_client::VolumeClient::delete_volume(self, name).await
    }
    async fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, Status> {
        cairn_client::VolumeClient::resize_volume(self, name, size_bytes).await
    }
    async fn get_volume(&self, name: &str) -> Result<pb::Volume, Status> {
        cairn_client::VolumeClient::get_volume(self, name).await
    }
    async fn list_volumes(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListVolumesResponse, Status> {
        cairn_client::VolumeClient::list_volumes(self, page_size, page_token).await
    }
    async fn get_capacity(
        &self,
        req: pb::GetCapacityRequest,
    ) -> Result<pb::GetCapacityResponse, Status> {
        cairn_client::VolumeClient::get_capacity(self, req).await
    }
    async fn publish_volume(&self, req: pb::PublishVolumeRequest) -> Result<pb::Volume, Status> {
        cairn_client::VolumeClient::publish_volume(self, req).await
    }
    async fn unpublish_volume(&self, name: &str, node_name: &str) -> Result<(), Status> {
        cairn_client::VolumeClient::unpublish_volume(self, name, node_name).await
    }
    async fn list_nodes(&self) -> Result<Vec<pb::Node>, Status> {
        cairn_client::VolumeClient::list_nodes(self).await
    }
    async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
        cairn_client::VolumeClient::cluster_status(self).await
    }
    async fn create_snapshot(&self, name: &str, source: &str) -> Result<pb::Snapshot, Status> {
        cairn_client::VolumeClient::create_snapshot(self, name, source).await
    }
    async fn delete_snapshot(&self, name: &str) -> Result<(), Status> {
        cairn_client::VolumeClient::delete_snapshot(self, name).await
    }
    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        cairn_client::VolumeClient::list_snapshots(self, req).await
    }
}

#[tonic::async_trait]
impl NodeBackend for cairn_client::NodeClient {
    async fn attach_volume(
        &self,
        req: pb::AttachVolumeRequest,
    ) -> Result<pb::NodeAttachment, Status> {
        cairn_client::NodeClient::attach_volume(self, req).await
    }
    async fn detach_volume(&self, volume: &str) -> Result<(), Status> {
        cairn_client::NodeClient::detach_volume(self, volume).await
    }
    async fn list_attachments(&self) -> Result<Vec<pb::NodeAttachment>, Status> {
        cairn_client::NodeClient::list_attachments(self).await
    }
    async fn refresh_size(&self, volume: &str) -> Result<pb::NodeAttachment, Status> {
        cairn_client::NodeClient::refresh_size(self, volume).await
    }
}

/// The kind of a volume as storaged reports it (UNSPECIFIED means replicated).
pub fn is_local(v: &pb::Volume) -> bool {
    v.kind == pb::VolumeKind::Local as i32
}

/// An in-memory stand-in for storaged's catalogue, with its documented semantics
/// (idempotent create by name, NOT_FOUND, fencing of single-node attachments).
#[cfg(test)]
pub mod fake {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeVolumes {
        pub volumes: Mutex<BTreeMap<String, pb::Volume>>,
        pub nodes: Vec<pb::Node>,
        /// When set, every call fails with UNAVAILABLE.
        pub down: std::sync::atomic::AtomicBool,
        /// Capacity reported by GetCapacity.
        pub available: u64,
    }

    impl FakeVolumes {
        pub fn with_nodes(names: &[(&str, Option<&str>)]) -> Self {
            let nodes = names
                .iter()
                .enumerate()
                .map(|(i, (n, zone))| pb::Node {
                    id: i as u64 + 1,
                    name: n.to_string(),
                    labels: zone
                        .map(|z| [("zone".to_string(), z.to_string())].into())
                        .unwrap_or_default(),
                    role: "voter".into(),
                    reachable: true,
                    ..Default::default()
                })
                .collect();
            FakeVolumes {
                nodes,
                available: 100 << 30,
                ..Default::default()
            }
        }

        fn check(&self) -> Result<(), Status> {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                Err(Status::unavailable("storaged is down"))
            } else {
                Ok(())
            }
        }

        pub fn set_health(&self, name: &str, health: pb::VolumeHealth) {
            if let Some(v) = self.volumes.lock().unwrap().get_mut(name) {
                v.health = health as i32;
            }
        }
    }

    #[tonic::async_trait]
    impl VolumeBackend for FakeVolumes {
        async fn create_volume(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, Status> {
            self.check()?;
            let mut vols = self.volumes.lock().unwrap();
            let kind = if req.kind == pb::VolumeKind::Local as i32 {
                pb::VolumeKind::Local
            } else {
                pb::VolumeKind::Replicated
            };
            let replicas = if kind == pb::VolumeKind::Local {
                1
            } else if req.replicas == 0 {
                3
            } else {
                req.replicas
            };
            if let Some(v) = vols.get(&req.name) {
                if v.size_bytes != req.size_bytes || v.kind != kind as i32 || v.replicas != replicas
                {
                    return Err(Status::already_exists("different volume with that name"));
                }
                return Ok(v.clone());
            }
            if req.size_bytes > self.available {
                return Err(Status::resource_exhausted("no placement"));
            }
            // Place on the nodes allowed by the requisite terms (all when none).
            let allowed: Vec<&pb::Node> = self
                .nodes
                .iter()
                .filter(|n| {
                    req.requisite.is_empty()
                        || req.requisite.iter().any(|t| {
                            t.segments.iter().all(|(k, v)| match k.as_str() {
                                "topology.cairn.dev/node" => &n.name == v,
                                "topology.kubernetes.io/zone" => n.labels.get("zone") == Some(v),
                                _ => false,
                            })
                        })
                })
                .collect();
            if allowed.len() < replicas as usize {
                return Err(Status::resource_exhausted("not enough nodes in topology"));
            }
            let v = pb::Volume {
                id: vols.len() as u64 + 1,
                name: req.name.clone(),
                size_bytes: req.size_bytes,
                replicas,
                kind: kind as i32,
                members: allowed[..replicas as usize]
                    .iter()
                    .map(|n| pb::Replica {
                        node_id: n.id,
                        node_name: n.name.clone(),
                        state: pb::ReplicaState::Follower as i32,
                        ..Default::default()
                    })
                    .collect(),
                health: pb::VolumeHealth::Healthy as i32,
                ..Default::default()
            };
            vols.insert(req.name, v.clone());
            Ok(v)
        }
        async fn delete_volume(&self, name: &str) -> Result<(), Status> {
            self.check()?;
            match self.volumes.lock().unwrap().remove(name) {
                Some(_) => Ok(()),
                None => Err(Status::not_found(format!("volume {name}"))),
            }
        }
        async fn resize_volume(&self, name: &str, size_bytes: u64) -> Result<pb::Volume, Status> {
            self.check()?;
            let mut vols = self.volumes.lock().unwrap();
            let v = vols
                .get_mut(name)
                .ok_or_else(|| Status::not_found(format!("volume {name}")))?;
            if size_bytes < v.size_bytes {
                return Err(Status::out_of_range("shrink"));
            }
            v.size_bytes = size_bytes;
            Ok(v.clone())
        }
        async fn get_volume(&self, name: &str) -> Result<pb::Volume, Status> {
            self.check()?;
            self.volumes
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("volume {name}")))
        }
        async fn list_volumes(
            &self,
            page_size: u32,
            page_token: &str,
        ) -> Result<pb::ListVolumesResponse, Status> {
            self.check()?;
            let vols = self.volumes.lock().unwrap();
            let page: Vec<pb::Volume> = vols
                .range::<str, _>((
                    std::ops::Bound::Excluded(page_token),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, v)| v.clone())
                .take(if page_size == 0 {
                    usize::MAX
                } else {
                    page_size as usize
                })
                .collect();
            let next = match page.last() {
                Some(last)
                    if vols
                        .range::<str, _>((
                            std::ops::Bound::Excluded(last.name.as_str()),
                            std::ops::Bound::Unbounded,
                        ))
                        .next()
                        .is_some() =>
                {
                    last.name.clone()
                }
                _ => String::new(),
            };
            Ok(pb::ListVolumesResponse {
                volumes: page,
                next_page_token: next,
            })
        }
        async fn get_capacity(
            &self,
            req: pb::GetCapacityRequest,
        ) -> Result<pb::GetCapacityResponse, Status> {
            self.check()?;
            let matches = self.nodes.iter().any(|n| {
                req.topology.as_ref().is_none_or(|t| {
                    t.segments.iter().all(|(k, v)| match k.as_str() {
                        "topology.cairn.dev/node" => &n.name == v,
                        "topology.kubernetes.io/zone" => n.labels.get("zone") == Some(v),
                        _ => false,
                    })
                })
            });
            let avail = if matches { self.available } else { 0 };
            Ok(pb::GetCapacityResponse {
                available_bytes: avail,
                maximum_volume_size: avail,
                nodes: vec![],
            })
        }
        async fn publish_volume(
            &self,
            req: pb::PublishVolumeRequest,
        ) -> Result<pb::Volume, Status> {
            self.check()?;
            if !self.nodes.iter().any(|n| n.name == req.node_name) {
                return Err(Status::not_found(format!("node {}", req.node_name)));
            }
            let mut vols = self.volumes.lock().unwrap();
            let v = vols
                .get_mut(&req.name)
                .ok_or_else(|| Status::not_found(format!("volume {}", req.name)))?;
            if v.attachments.iter().any(|a| a.node_name == req.node_name) {
                return Ok(v.clone());
            }
            if v.attachments
                .iter()
                .any(|a| !(a.multi_node && req.multi_node))
            {
                return Err(Status::failed_precondition("attached to another node"));
            }
            let generation = v
                .attachments
                .iter()
                .map(|a| a.generation)
                .max()
                .unwrap_or(0)
                + 1;
            v.attachments.push(pb::Attachment {
                node_name: req.node_name,
                readonly: req.readonly,
                multi_node: req.multi_node,
                generation,
            });
            Ok(v.clone())
        }
        async fn unpublish_volume(&self, name: &str, node_name: &str) -> Result<(), Status> {
            self.check()?;
            let mut vols = self.volumes.lock().unwrap();
            let v = vols
                .get_mut(name)
                .ok_or_else(|| Status::not_found(format!("volume {name}")))?;
            v.attachments.retain(|a| a.node_name != node_name);
            Ok(())
        }
        async fn list_nodes(&self) -> Result<Vec<pb::Node>, Status> {
            self.check()?;
            Ok(self.nodes.clone())
        }
        async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, Status> {
            self.check()?;
            Ok(pb::ClusterStatusResponse {
                nodes: self.nodes.clone(),
                ..Default::default()
            })
        }
    }
}
