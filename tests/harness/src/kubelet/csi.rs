//! CSI node plugins as the kubelet uses them: discovery under `<root>/plugins/*/csi.sock`
//! and through plugin registration, CSINode upkeep, stage/publish and reverses, expansion.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use cairn_proto::csi::v1 as csi;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::storage::v1::{CSIDriver, VolumeAttachment};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint, Uri};

use super::Kubelet;
use crate::controllers::attach_detach::{attach_required, attachment_name, unique_volume_name};
use crate::registry::WriteOptions;
use crate::resources;

/// Bound on NodeGetInfo for a plugin found without registration, asked at every refresh
/// (the kubelet's loop waits for it): a plugin whose storaged is away is left out until the next.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects a gRPC channel to a Unix socket.
pub async fn connect(path: &Path) -> Result<Channel, String> {
    let path = path.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connecting to the CSI plugin: {e}"))
}

/// What the kubelet learned from a node plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    pub socket: PathBuf,
    pub node_id: String,
    pub topology: BTreeMap<String, String>,
    pub max_volumes: i64,
}

/// The node plugins this kubelet knows, keyed by driver name.
pub struct Plugins {
    root: PathBuf,
    extra: Vec<PathBuf>,
    /// Plugins registered through `plugins_registry` (pluginregistration.v1).
    pub registrations: super::plugins::Registry,
    known: Mutex<HashMap<String, PluginInfo>>,
}

/// Upstream's staging path: `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`.
pub fn staging_path(root: &Path, driver: &str, handle: &str) -> PathBuf {
    root.join("plugins/kubernetes.io/csi")
        .join(driver)
        .join(hex::encode(Sha256::digest(handle.as_bytes())))
        .join("globalmount")
}

/// Upstream's publish path: `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`.
pub fn publish_path(root: &Path, pod_uid: &str, pv: &str) -> PathBuf {
    root.join("pods")
        .join(pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(pv)
        .join("mount")
}

fn access_mode(pv: &PersistentVolume) -> i32 {
    use csi::volume_capability::access_mode::Mode;
    let modes = pv
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    let m = match modes.first().map(String::as_str) {
        Some("ReadOnlyMany") => Mode::MultiNodeReaderOnly,
        Some("ReadWriteMany") => Mode::MultiNodeMultiWriter,
        Some("ReadWriteOncePod") => Mode::SingleNodeSingleWriter,
        _ => Mode::SingleNodeWriter,
    };
    m as i32
}

fn capability(pv: &PersistentVolume, src: &CSIPersistentVolumeSource) -> csi::VolumeCapability {
    use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
    let spec = pv.spec.clone().unwrap_or_default();
    let access_type = if spec.volume_mode.as_deref() == Some("Block") {
        AccessType::Block(BlockVolume {})
    } else {
        AccessType::Mount(MountVolume {
            fs_type: src.fs_type.clone().unwrap_or_default(),
            mount_flags: spec.mount_options.clone().unwrap_or_default(),
            volume_mount_group: String::new(),
        })
    };
    csi::VolumeCapability {
        access_type: Some(access_type),
        access_mode: Some(AccessMode {
            mode: access_mode(pv),
        }),
    }
}

impl Plugins {
    pub fn new(root: PathBuf, extra: Vec<PathBuf>) -> Self {
        Plugins {
            root,
            extra,
            registrations: Default::default(),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Sockets found without a registration: the configured ones and `<root>/plugins/*/csi.sock`.
    fn sockets(&self) -> Vec<PathBuf> {
        let mut out = self.extra.clone();
        if let Ok(rd) = std::fs::read_dir(self.root.join("plugins")) {
            for e in rd.flatten() {
                let s = e.path().join("csi.sock");
                if s.exists() {
                    out.push(s);
                }
            }
        }
        out
    }

    pub fn get(&self, driver: &str) -> Option<PluginInfo> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(driver)
            .cloned()
    }

    /// Rescans plugin sockets; registers new drivers in CSINode and node labels. A plugin
    /// registered through `plugins_registry` keeps what NodeGetInfo answered at its
    /// registration, as upstream's; a socket found otherwise is asked again, within `REFRESH_TIMEOUT`.
    pub async fn refresh(&self, kl: &Kubelet) {
        let registered = self.registrations.registered();
        let mut found: HashMap<String, PluginInfo> = registered
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    plugin_info(r.endpoint.clone(), r.node_info.clone()),
                )
            })
            .collect();
        for sock in self.sockets() {
            if registered.iter().any(|r| r.endpoint == sock) {
                continue;
            }
            // Bounded too: a plugin of a paused node accepts a connection and never answers.
            let Ok(Ok(ch)) = tokio::time::timeout(REFRESH_TIMEOUT, connect(&sock)).await else {
                continue;
            };
            let mut identity = IdentityClient::new(ch.clone());
            let info = identity.get_plugin_info(csi::GetPluginInfoRequest {});
            let Ok(Ok(info)) = tokio::time::timeout(REFRESH_TIMEOUT, info).await else {
                continue;
            };
            let mut req = tonic::Request::new(csi::NodeGetInfoRequest {});
            req.set_timeout(REFRESH_TIMEOUT);
            let mut client = NodeClient::new(ch);
            let call = client.node_get_info(req);
            let Ok(Ok(ni)) = tokio::time::timeout(REFRESH_TIMEOUT, call).await else {
                continue;
            };
            let name = info.into_inner().name;
            found
                .entry(name)
                .or_insert_with(|| plugin_info(sock, ni.into_inner()));
        }
        let changed = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let changed = *known != found;
            *known = found.clone();
            changed
        };
        if changed
            || kl
                .client
                .registry()
                .get(&resources::CSINODES, None, &kl.node)
                .is_err()
        {
            update_csinode(kl, &found);
        }
    }
}

/// What the kubelet keeps of a plugin's NodeGetInfo answer.
fn plugin_info(socket: PathBuf, ni: csi::NodeGetInfoResponse) -> PluginInfo {
    PluginInfo {
        socket,
        node_id: ni.node_id,
        topology: ni
            .accessible_topology
            .map(|t| t.segments.into_iter().collect())
            .unwrap_or_default(),
        max_volumes: ni.max_volumes_per_node,
    }
}

/// CSINode lists the registered drivers; the Node carries their topology labels
/// and the `csi.volume.kubernetes.io/nodeid` annotation, as kubelet writes them.
fn update_csinode(kl: &Kubelet, plugins: &HashMap<String, PluginInfo>) {
    let reg = kl.client.registry();
    let mut drivers: Vec<Value> = plugins
        .iter()
        .map(|(name, p)| {
            let mut d = json!({"name": name, "nodeID": p.node_id, "topologyKeys": p.topology.keys().collect::<Vec<_>>()});
            if p.max_volumes > 0 {
                d["allocatable"] = json!({"count": p.max_volumes});
            }
            d
        })
        .collect();
    drivers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let node = reg.get(&resources::NODES, None, &kl.node).ok();
    let owner = node.as_ref().map(|n| json!([{"apiVersion": "v1", "kind": "Node", "name": kl.node, "uid": n["metadata"]["uid"]}]));
    let obj = json!({"apiVersion": "storage.k8s.io/v1", "kind": "CSINode",
        "metadata": {"name": kl.node, "ownerReferences": owner}, "spec": {"drivers": drivers}});
    if let Err(e) = reg.create(&resources::CSINODES, None, obj, WriteOptions::default())
        && e.is_already_exists()
    {
        let _ = kl.client.patch_rt(
            &resources::CSINODES,
            None,
            &kl.node,
            &json!({"spec": {"drivers": drivers}}),
        );
    }
    if plugins.is_empty() {
        return;
    }
    let ids: BTreeMap<&String, &String> = plugins.iter().map(|(n, p)| (n, &p.node_id)).collect();
    let mut labels = serde_json::Map::new();
    for p in plugins.values() {
        for (k, v) in &p.topology {
            labels.insert(k.clone(), json!(v));
        }
    }
    let patch = json!({"metadata": {"labels": labels,
        "annotations": {"csi.volume.kubernetes.io/nodeid": serde_json::to_string(&ids).unwrap_or_default()}}});
    let _ = kl
        .client
        .patch_rt(&resources::NODES, None, &kl.node, &patch);
    tracing::info!(node = %kl.node, drivers = plugins.len(), "CSINode updated");
}

/// What the kubelet records beside a publish path to undo it later (`vol_data.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct VolData {
    driver: String,
    handle: String,
    staging: Option<PathBuf>,
}

impl Kubelet {
    async fn node_client(&self, driver: &str) -> Result<NodeClient<Channel>, String> {
        if self.csi.get(driver).is_none() {
            self.csi.refresh(self).await;
        }
        let info = self.csi.get(driver).ok_or_else(|| {
            format!("kubernetes.io/csi: attacher.MountDevice failed to create newCsiDriverClient: driver name {driver} not found in the list of registered CSI drivers")
        })?;
        Ok(NodeClient::new(connect(&info.socket).await?))
    }

    async fn stages(client: &mut NodeClient<Channel>) -> Result<bool, String> {
        use csi::node_service_capability::{Type, rpc::Type as Rpc};
        let caps = client
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await
            .map_err(|e| e.message().to_string())?;
        Ok(caps.into_inner().capabilities.iter().any(|c| matches!(&c.r#type, Some(Type::Rpc(r)) if r.r#type == Rpc::StageUnstageVolume as i32)))
    }

    /// Waits for attach (when required), stages and publishes; returns the publish path.
    pub(crate) async fn csi_publish(
        &self,
        pod: &Pod,
        pv: &PersistentVolume,
        src: &CSIPersistentVolumeSource,
        read_only: bool,
    ) -> Result<PathBuf, String> {
        let pv_name = pv.metadata.name.clone().unwrap_or_default();
        let (driver, handle) = (src.driver.clone(), src.volume_handle.clone());
        let drivers = self.client.list::<CSIDriver>(None);
        let mut publish_context = HashMap::new();
        if attach_required(&drivers, &driver) {
            let va_name = attachment_name(&handle, &driver, &self.node);
            let va = self
                .client
                .get::<VolumeAttachment>(None, &va_name)
                .ok()
                .flatten();
            let status = va.and_then(|v| v.status).filter(|s| s.attached);
            let status =
                status.ok_or_else(|| format!("volume attachment {va_name} is not attached yet"))?;
            publish_context = status
                .attachment_metadata
                .unwrap_or_default()
                .into_iter()
                .collect();
        }
        let mut client = self.node_client(&driver).await?;
        let cap = capability(pv, src);
        let secret =
            |r: &Option<k8s_openapi::api::core::v1::SecretReference>| -> HashMap<String, String> {
                let Some(r) = r else { return HashMap::new() };
                let s = self
                    .client
                    .get::<Secret>(
                        r.namespace.as_deref(),
                        r.name.as_deref().unwrap_or_default(),
                    )
                    .ok()
                    .flatten();
                s.and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).to_string()))
                    .collect()
            };
        let attrs: HashMap<String, String> = src
            .volume_attributes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        self.volumes_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unique_volume_name(&driver, &handle));
        let staging = if Self::stages(&mut client).await? {
            let staging = staging_path(&self.csi_root(), &driver, &handle);
            std::fs::create_dir_all(self.host_of(&staging)).map_err(|e| e.to_string())?;
            let req = csi::NodeStageVolumeRequest {
                volume_id: handle.clone(),
                publish_context: publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                secrets: secret(&src.node_stage_secret_ref),
                volume_context: attrs.clone(),
            };
            client
                .node_stage_volume(req)
                .await
                .map_err(|e| format!("rpc error: code = {:?} desc = {}", e.code(), e.message()))?;
            tracing::info!(node = %self.node, pv = %pv_name, path = %staging.display(), "volume staged");
            Some(staging)
        } else {
            None
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let target = publish_path(&self.csi_root(), &uid, &pv_name);
        let parent = self.host_of(target.parent().expect("publish path has a parent"));
        std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
        let data = VolData {
            driver: driver.clone(),
            handle: handle.clone(),
            staging: staging.clone(),
        };
        std::fs::write(
            parent.join("vol_data.json"),
            serde_json::to_vec(&data).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        let mut context = attrs;
        if drivers.iter().any(|d| {
            d.metadata.name.as_deref() == Some(&driver) && d.spec.pod_info_on_mount == Some(true)
        }) {
            context.insert(
                "csi.storage.k8s.io/pod.name".into(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            context.insert(
                "csi.storage.k8s.io/pod.namespace".into(),
                pod.metadata.namespace.clone().unwrap_or_default(),
            );
            context.insert("csi.storage.k8s.io/pod.uid".into(), uid.clone());
            let sa = pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            context.insert("csi.storage.k8s.io/serviceAccount.name".into(), sa);
            context.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
        }
        let req = csi::NodePublishVolumeRequest {
            volume_id: handle,
            publish_context,
            staging_target_path: staging.map(|s| s.display().to_string()).unwrap_or_default(),
            target_path: target.display().to_string(),
            volume_capability: Some(cap),
            readonly: read_only || src.read_only == Some(true),
            secrets: secret(&src.node_publish_secret_ref),
            volume_context: context,
        };
        client
            .node_publish_volume(req)
            .await
            .map_err(|e| format!("rpc error: code = {:?} desc = {}", e.code(), e.message()))?;
        tracing::info!(node = %self.node, pv = %pv_name, pod_uid = %uid, path = %target.display(), "volume published");
        Ok(target)
    }

    /// Unpublishes a pod's CSI volume, and unstages it when no other pod here uses it.
    pub(crate) async fn csi_unpublish(&self, pod_uid: &str, pv: &str) -> Result<(), String> {
        let target = publish_path(&self.csi_root(), pod_uid, pv);
        let parent = self.host_of(target.parent().expect("publish path has a parent"));
        let Ok(raw) = std::fs::read(parent.join("vol_data.json")) else {
            let _ = std::fs::remove_dir_all(&parent);
            return Ok(());
        };
        let data: VolData = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
        let mut client = self.node_client(&data.driver).await?;
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: data.handle.clone(),
            target_path: target.display().to_string(),
        };
        client
            .node_unpublish_volume(req)
            .await
            .map_err(|e| e.message().to_string())?;
        tracing::info!(node = %self.node, pv = %pv, pod_uid = %pod_uid, "volume unpublished");
        // This pod's record (vol_data.json) stays until the unstage below succeeds, so a
        // failed unstage is retried by the next teardown.
        let still_used = std::fs::read_dir(self.root.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str() != Some(pod_uid))
            .any(|e| {
                e.path()
                    .join("volumes/kubernetes.io~csi")
                    .join(pv)
                    .join("vol_data.json")
                    .exists()
            });
        if still_used {
            let _ = std::fs::remove_dir_all(&parent);
            return Ok(());
        }
        if let Some(staging) = &data.staging {
            let req = csi::NodeUnstageVolumeRequest {
                volume_id: data.handle.clone(),
                staging_target_path: staging.display().to_string(),
            };
            client
                .node_unstage_volume(req)
                .await
                .map_err(|e| e.message().to_string())?;
            if let Some(dir) = staging.parent() {
                let _ = std::fs::remove_dir_all(self.host_of(dir));
            }
            tracing::info!(node = %self.node, pv = %pv, "volume unstaged");
        }
        let _ = std::fs::remove_dir_all(&parent);
        self.volumes_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&unique_volume_name(&data.driver, &data.handle));
        Ok(())
    }

    /// NodeExpandVolume for published claims marked FileSystemResizePending, then
    /// the claim's capacity is updated and the condition cleared.
    pub(crate) async fn csi_expand_pending(&self) {
        for pvc in self.client.list::<PersistentVolumeClaim>(None) {
            let pending = pvc
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "FileSystemResizePending" && c.status == "True");
            let Some(pv_name) = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.clone())
                .filter(|_| pending)
            else {
                continue;
            };
            let Ok(pods) = std::fs::read_dir(self.root.join("pods")) else {
                continue;
            };
            let published: Vec<PathBuf> = pods
                .flatten()
                .map(|e| e.path().join("volumes/kubernetes.io~csi").join(&pv_name))
                .filter(|p| p.join("vol_data.json").exists())
                .collect();
            let Some(dir) = published.first() else {
                continue;
            };
            let Ok(data) = std::fs::read(dir.join("vol_data.json"))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<VolData>(&b).map_err(|e| e.to_string()))
            else {
                continue;
            };
            let want = crate::pvutil::claim_request(&pvc);
            let Ok(mut client) = self.node_client(&data.driver).await else {
                continue;
            };
            let req = csi::NodeExpandVolumeRequest {
                volume_id: data.handle.clone(),
                volume_path: self.node_of(&dir.join("mount")).display().to_string(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: want,
                    limit_bytes: 0,
                }),
                staging_target_path: data
                    .staging
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
                volume_capability: None,
                secrets: HashMap::new(),
            };
            match client.node_expand_volume(req).await {
                Ok(_) => {
                    let size = pvc
                        .spec
                        .as_ref()
                        .and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage").cloned());
                    let conds: Vec<Value> = pvc
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c.type_ != "FileSystemResizePending")
                        .map(|c| serde_json::to_value(c).unwrap_or_default())
                        .collect();
                    let patch = json!({"status": {"capacity": {"storage": size}, "conditions": conds, "allocatedResourceStatuses": null}});
                    let (ns, name) = (
                        pvc.metadata.namespace.as_deref(),
                        pvc.metadata.name.as_deref().unwrap_or_default(),
                    );
                    let _ = self
                        .client
                        .patch_status::<PersistentVolumeClaim>(ns, name, &patch);
                    self.events.record_typed(
                        &pvc,
                        "Normal",
                        "FileSystemResizeSuccessful",
                        &format!(
                            "MountVolume.NodeExpandVolume succeeded for volume \"{pv_name}\" {}",
                            self.node
                        ),
                    );
                }
                Err(e) => self.events.record_typed(
                    &pvc,
                    "Warning",
                    "FileSystemResizeFailed",
                    &format!(
                        "MountVolume.NodeExpandVolume failed for volume \"{pv_name}\": {}",
                        e.message()
                    ),
                ),
            }
        }
    }
}
