//! The local static provisioner (node-local role): disks and mounts under the discovery
//! directory become `local` PVs pinned to this node; released ones are wiped and offered again.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    LocalVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::context::Ctx;
use crate::error::{Error, Result, is_api_code};
use crate::names::{ANN_PROVISIONED_BY, HOSTNAME_LABEL, LOCAL_STORAGE_CLASS};
use crate::quantity;

/// Label on our local PVs naming the node, for cheap listing.
pub const LABEL_LOCAL_NODE: &str = "local.cairn.dev/node";

/// One discovered volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Absolute path (a directory, or a block device node or a symlink to one).
    pub path: PathBuf,
    /// True for a block device (volumeMode Block).
    pub block: bool,
    /// Capacity in bytes.
    pub bytes: u64,
}

/// Node-local role configuration.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// This node's name.
    pub node: String,
    /// The discovery directory (`/mnt/cairn-disks`).
    pub dir: PathBuf,
    /// The class of the PVs (`local-storage`).
    pub class: String,
    /// Discovery interval.
    pub interval: Duration,
}

impl LocalConfig {
    /// Defaults for `node` and `dir`.
    pub fn new(node: &str, dir: &Path) -> Self {
        LocalConfig {
            node: node.into(),
            dir: dir.into(),
            class: LOCAL_STORAGE_CLASS.into(),
            interval: Duration::from_secs(10),
        }
    }

    /// The provisioned-by value of this node's PVs.
    pub fn provisioner_name(&self) -> String {
        format!("cairn-local-provisioner-{}", self.node)
    }
}

/// Lists the volumes under `dir`: each directory entry that is a directory or block device.
pub fn discover(dir: &Path) -> Result<Vec<Disk>> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let meta = fs::metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_block_device() {
            let bytes = File::open(&path)
                .and_then(|mut f| f.seek(SeekFrom::End(0)))
                .map_err(io(&path))?;
            out.push(Disk {
                path,
                block: true,
                bytes,
            });
        } else if meta.is_dir() {
            let st = nix::sys::statvfs::statvfs(&path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: e.into(),
            })?;
            let bytes = st.blocks().saturating_mul(st.fragment_size());
            out.push(Disk {
                path,
                block: false,
                bytes,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A stable PV name for a node and path, as the upstream static provisioner: `local-pv-<hash>`.
pub fn pv_name(node: &str, path: &Path) -> String {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"\0");
    h.update(path.as_os_str().as_encoded_bytes());
    format!("local-pv-{}", &hex::encode(h.finalize())[..8])
}

/// The PV for a discovered disk.
pub fn build_pv(cfg: &LocalConfig, hostname: &str, reclaim: &str, disk: &Disk) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(&cfg.node, &disk.path)),
            labels: Some([(LABEL_LOCAL_NODE.to_string(), cfg.node.clone())].into()),
            annotations: Some([(ANN_PROVISIONED_BY.to_string(), cfg.provisioner_name())].into()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            capacity: Some([("storage".to_string(), quantity::from_bytes(disk.bytes))].into()),
            local: Some(LocalVolumeSource {
                path: disk.path.display().to_string(),
                fs_type: None,
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.into(),
                            operator: "In".into(),
                            values: Some(vec![hostname.to_string()]),
                        }]),
                        match_fields: None,
                    }],
                }),
            }),
            persistent_volume_reclaim_policy: Some(reclaim.to_string()),
            storage_class_name: Some(cfg.class.clone()),
            volume_mode: Some(if disk.block { "Block" } else { "Filesystem" }.into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// Erases a released volume: a directory's contents, or a block device's first and last MiB
/// (filesystem signatures and the backup GPT), like upstream's quick reset.
pub fn wipe(path: &Path, block: bool) -> Result<()> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    if block {
        let mut f = fs::OpenOptions::new().write(true).open(path).map_err(io)?;
        let size = f.seek(SeekFrom::End(0)).map_err(io)?;
        let zeros = vec![0u8; 1 << 20];
        for start in [0, size.saturating_sub(1 << 20)] {
            f.seek(SeekFrom::Start(start)).map_err(io)?;
            let n = (size - start).min(1 << 20) as usize;
            f.write_all(&zeros[..n]).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        return Ok(());
    }
    for entry in fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let ft = fs::symlink_metadata(&p).map_err(io)?.file_type();
        let removed = if ft.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        removed.map_err(io)?;
    }
    Ok(())
}

/// Runs until dropped.
pub async fn run(ctx: Arc<Ctx>, cfg: LocalConfig) {
    loop {
        match reconcile_once(&ctx, &cfg).await {
            Ok(()) => ctx.metrics.reconciled("local", "ok"),
            Err(e) => {
                ctx.metrics.reconciled("local", e.kind());
                warn!(node = %cfg.node, error = %e, "local volume discovery failed");
            }
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One pass: create PVs for new disks, wipe and recycle released ones, drop vanished ones.
pub async fn reconcile_once(ctx: &Ctx, cfg: &LocalConfig) -> Result<()> {
    let node = Api::<Node>::all(ctx.client.clone())
        .get_opt(&cfg.node)
        .await?;
    let hostname = node
        .as_ref()
        .and_then(|n| n.labels().get(HOSTNAME_LABEL).cloned())
        .unwrap_or_else(|| cfg.node.clone());
    let reclaim = Api::<StorageClass>::all(ctx.client.clone())
        .get_opt(&cfg.class)
        .await?
        .and_then(|c| c.reclaim_policy)
        .unwrap_or_else(|| "Delete".into());
    let disks = tokio::task::spawn_blocking({
        let dir = cfg.dir.clone();
        move || discover(&dir)
    })
    .await
    .map_err(|e| Error::Config(e.to_string()))??;
    let api = Api::<PersistentVolume>::all(ctx.client.clone());
    let lp = ListParams::default().labels(&format!("{LABEL_LOCAL_NODE}={}", cfg.node));
    let ours: BTreeMap<String, PersistentVolume> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|pv| pv.annotations().get(ANN_PROVISIONED_BY) == Some(&cfg.provisioner_name()))
        .map(|pv| (pv.name_any(), pv))
        .collect();

    for (name, pv) in &ours {
        let phase = pv
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let spec = pv.spec.clone().unwrap_or_default();
        let path = PathBuf::from(spec.local.map(|l| l.path).unwrap_or_default());
        let present = disks.iter().find(|d| d.path == path);
        if pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let reclaim_delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
        if phase == "Released" && reclaim_delete {
            if let Some(d) = present {
                let (p, block) = (d.path.clone(), d.block);
                tokio::task::spawn_blocking(move || wipe(&p, block))
                    .await
                    .map_err(|e| Error::Config(e.to_string()))??;
            }
            delete_pv(&api, name).await?;
            info!(pv = %name, node = %cfg.node, path = %path.display(), "released local volume wiped; offering again");
        } else if present.is_none() && phase == "Available" {
            delete_pv(&api, name).await?;
            info!(pv = %name, node = %cfg.node, path = %path.display(), "local volume vanished; PV removed");
        }
    }
    for disk in &disks {
        let name = pv_name(&cfg.node, &disk.path);
        if ours.contains_key(&name) {
            continue;
        }
        match api
            .create(
                &PostParams::default(),
                &build_pv(cfg, &hostname, &reclaim, disk),
            )
            .await
        {
            Ok(_) => {
                info!(pv = %name, node = %cfg.node, path = %disk.path.display(), bytes = disk.bytes, "local PV created")
            }
            Err(e) if is_api_code(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn delete_pv(api: &Api<PersistentVolume>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_api_code(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_dirs_and_wipes_contents() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("vol1")).unwrap();
        fs::write(root.path().join("vol1/data"), b"x").unwrap();
        fs::create_dir_all(root.path().join("vol1/sub/deeper")).unwrap();
        fs::write(root.path().join("not-a-volume"), b"file").unwrap();
        let disks = discover(root.path()).unwrap();
        assert_eq!(disks.len(), 1);
        assert!(!disks[0].block && disks[0].bytes > 0);
        wipe(&disks[0].path, false).unwrap();
        assert_eq!(fs::read_dir(&disks[0].path).unwrap().count(), 0);
        assert!(discover(&root.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn pv_is_pinned_to_the_node() {
        let cfg = LocalConfig::new("node-1", Path::new("/mnt/cairn-disks"));
        let disk = Disk {
            path: "/mnt/cairn-disks/vol1".into(),
            block: false,
            bytes: 1 << 30,
        };
        let pv = build_pv(&cfg, "node-1", "Delete", &disk);
        assert_eq!(pv.name_any(), pv_name("node-1", &disk.path));
        assert_ne!(pv_name("node-1", &disk.path), pv_name("node-2", &disk.path));
        let spec = pv.spec.unwrap();
        assert_eq!(
            spec.storage_class_name.as_deref(),
            Some(LOCAL_STORAGE_CLASS)
        );
        assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
        let term = &spec
            .node_affinity
            .unwrap()
            .required
            .unwrap()
            .node_selector_terms[0];
        assert_eq!(
            term.match_expressions.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["node-1"]
        );
    }
}
