//! Node service against real loop devices, mkfs and mounts, with a loop-device stand-in for
//! storaged's NodeService: stage/publish cycles, restart, conflicts, rollback, expansion.

use super::*;
use crate::params::{TOPOLOGY_NODE_KEY, TOPOLOGY_ZONE_KEY};
use crate::storaged::fake::FakeVolumes;
use csi::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

/// Attaches a sparse file per volume with `losetup`, as storaged does for local volumes.
struct LoopNode {
    dir: PathBuf,
    cluster: Arc<FakeVolumes>,
    table: Mutex<BTreeMap<String, pb::NodeAttachment>>,
}

fn losetup(args: &[&str]) -> std::result::Result<String, Status> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| Status::internal(e.to_string()))?;
    if !out.status.success() {
        return Err(Status::internal(
            String::from_utf8_lossy(&out.stderr).to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tonic::async_trait]
impl NodeBackend for LoopNode {
    async fn attach_volume(
        &self,
        req: pb::AttachVolumeRequest,
    ) -> std::result::Result<pb::NodeAttachment, Status> {
        let v = self.cluster.get_volume(&req.volume).await?;
        if let Some(a) = self.table.lock().unwrap().get(&req.volume) {
            return if a.readonly == req.readonly {
                Ok(a.clone())
            } else {
                Err(Status::failed_precondition("mode"))
            };
        }
        let file = self.dir.join(format!("{}.img", req.volume));
        if !file.exists() {
            std::fs::File::create(&file)
                .unwrap()
                .set_len(v.size_bytes)
                .unwrap();
        }
        let f = file.to_str().unwrap();
        let dev = if req.readonly {
            losetup(&["-r", "-f", "--show", f])?
        } else {
            losetup(&["-f", "--show", f])?
        };
        let a = pb::NodeAttachment {
            volume: req.volume.clone(),
            device_path: dev,
            size_bytes: v.size_bytes,
            readonly: req.readonly,
            ..Default::default()
        };
        self.table.lock().unwrap().insert(req.volume, a.clone());
        Ok(a)
    }
    async fn detach_volume(&self, volume: &str) -> std::result::Result<(), Status> {
        let a = self.table.lock().unwrap().remove(volume);
        if let Some(a) = a {
            losetup(&["-d", &a.device_path])?;
        }
        Ok(())
    }
    async fn list_attachments(&self) -> std::result::Result<Vec<pb::NodeAttachment>, Status> {
        Ok(self.table.lock().unwrap().values().cloned().collect())
    }
    async fn refresh_size(&self, volume: &str) -> std::result::Result<pb::NodeAttachment, Status> {
        let v = self.cluster.get_volume(volume).await?;
        let mut t = self.table.lock().unwrap();
        let a = t
            .get_mut(volume)
            .ok_or_else(|| Status::not_found("not attached"))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join(format!("{volume}.img")))
            .unwrap()
            .set_len(v.size_bytes)
            .unwrap();
        losetup(&["-c", &a.device_path])?;
        a.size_bytes = v.size_bytes;
        Ok(a.clone())
    }
}

struct Env {
    dir: tempfile::TempDir,
    cluster: Arc<FakeVolumes>,
    backend: Arc<LoopNode>,
    svc: NodeService,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cairn-csi-node-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("kubelet")).unwrap();
        std::fs::create_dir_all(dir.path().join("pool")).unwrap();
        let cluster = Arc::new(FakeVolumes::with_nodes(&[
            ("node-1", Some("zone-a")),
            ("node-2", None),
        ]));
        let backend = Arc::new(LoopNode {
            dir: dir.path().join("pool"),
            cluster: cluster.clone(),
            table: Mutex::default(),
        });
        let svc = Env::service(dir.path(), &backend, &cluster);
        Env {
            dir,
            cluster,
            backend,
            svc,
        }
    }

    /// A fresh service instance: what a restarted plugin process starts with.
    fn service(dir: &Path, backend: &Arc<LoopNode>, cluster: &Arc<FakeVolumes>) -> NodeService {
        let cfg = NodeConfig {
            node_id: "node-1".into(),
            paths: PathPolicy::new([dir.join("kubelet")]),
            frontend: pb::Frontend::Fuse,
            max_volumes_per_node: 16,
        };
        NodeService::new(cfg, backend.clone(), cluster.clone())
    }

    async fn volume(&self, name: &str, size: u64) {
        self.cluster
            .create_volume(pb::CreateVolumeRequest {
                name: name.into(),
                size_bytes: size,
                replicas: 1,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    fn path(&self, rel: &str) -> String {
        std::fs::canonicalize(self.dir.path())
            .unwrap()
            .join("kubelet")
            .join(rel)
            .to_str()
            .unwrap()
            .to_string()
    }

    fn mounts(&self) -> Vec<PathBuf> {
        let root = std::fs::canonicalize(self.dir.path()).unwrap();
        mount::read_mountinfo()
            .unwrap()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&root))
            .collect()
    }

    async fn stage(
        &self,
        id: &str,
        staging: &str,
        cap: csi::VolumeCapability,
    ) -> std::result::Result<(), Code> {
        self.svc
            .node_stage_volume(Request::new(csi::NodeStageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                volume_capability: Some(cap),
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|e| e.code())
    }

    async fn unstage(&self, id: &str, staging: &str) -> std::result::Result<(), Code> {
        self.svc
            .node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
            }))
            .await
            .map(drop)
            .map_err(|e| e.code())
    }

    async fn publish(
        &self,
        id: &str,
        staging: &str,
        target: &str,
        cap: csi::VolumeCapability,
        ro: bool,
    ) -> std::result::Result<(), Code> {
        self.svc
            .node_publish_volume(Request::new(csi::NodePublishVolumeRequest {
                volume_id: id.into(),
                staging_target_path: staging.into(),
                target_path: target.into(),
                volume_capability: Some(cap),
                readonly: ro,
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|e| e.code())
    }

    async fn unpublish(&self, id: &str, target: &str) -> std::result::Result<(), Code> {
        self.svc
            .node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: target.into(),
            }))
            .await
            .map(drop)
            .map_err(|e| e.code())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut mounts = self.mounts();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for a in self.backend.table.lock().unwrap().values() {
            let _ = losetup(&["-d", &a.device_path]);
        }
    }
}

fn mount_cap(mode: Mode, fs: &str) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs.into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

#[tokio::test]
async fn filesystem_cycle_keeps_data_and_never_reformats() {
    let env = Env::new();
    env.volume("pvc-fs", 64 << 20).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");
    let (staging, target, ro_target) = (
        env.path("plugins/x/globalmount"),
        env.path("pods/p/mount"),
        env.path("pods/q/mount"),
    );
    env.stage("pvc-fs", &staging, cap.clone()).await.unwrap();
    env.stage("pvc-fs", &staging, cap.clone()).await.unwrap();
    let m = mount::read_mountinfo().unwrap();
    assert_eq!(
        mount::mount_at(&m, Path::new(&staging)).unwrap().fs_type,
        "ext4"
    );
    env.publish("pvc-fs", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    env.publish("pvc-fs", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    std::fs::write(Path::new(&target).join("keep"), b"data").unwrap();
    // A second, read-only publication.
    env.publish("pvc-fs", &staging, &ro_target, cap.clone(), true)
        .await
        .unwrap();
    let err = std::fs::write(Path::new(&ro_target).join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        std::fs::read(Path::new(&ro_target).join("keep")).unwrap(),
        b"data"
    );
    assert_eq!(env.mounts().len(), 3);

    for t in [&target, &ro_target] {
        env.unpublish("pvc-fs", t).await.unwrap();
        env.unpublish("pvc-fs", t).await.unwrap();
        assert!(!Path::new(t).exists());
    }
    env.unstage("pvc-fs", &staging).await.unwrap();
    env.unstage("pvc-fs", &staging).await.unwrap();
    assert!(env.mounts().is_empty());
    assert!(env.backend.table.lock().unwrap().is_empty(), "detached");

    // Staging again finds the filesystem and mounts it as is.
    env.stage("pvc-fs", &staging, cap.clone()).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&staging).join("keep")).unwrap(),
        b"data"
    );
    env.unstage("pvc-fs", &staging).await.unwrap();
}

#[tokio::test]
async fn block_cycle_round_trips_data() {
    let env = Env::new();
    env.volume("pvc-blk", 16 << 20).await;
    let (staging, target) = (
        env.path("plugins/b/staging"),
        env.path("pods/p/volumeDevices/pvc-blk"),
    );
    env.stage("pvc-blk", &staging, block_cap()).await.unwrap();
    env.stage("pvc-blk", &staging, block_cap()).await.unwrap();
    env.publish("pvc-blk", &staging, &target, block_cap(), false)
        .await
        .unwrap();
    env.publish("pvc-blk", &staging, &target, block_cap(), false)
        .await
        .unwrap();
    assert!(block_vol::is_block_device(Path::new(&target)));
    assert_eq!(
        block_vol::device_size(Path::new(&target)).unwrap(),
        16 << 20
    );
    let pattern: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 253) as u8).collect();
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
        let mut back = vec![0u8; 1 << 20];
        f.seek(SeekFrom::Start(3 << 20)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert_eq!(back, pattern);
    }
    let stats = env
        .svc
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "pvc-blk".into(),
            volume_path: target.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 16 << 20);
    // The mount capability at the block staging path is incompatible.
    assert_eq!(
        env.stage("pvc-blk", &staging, mount_cap(Mode::SingleNodeWriter, ""))
            .await,
        Err(Code::AlreadyExists)
    );
    assert_eq!(
        env.unstage("pvc-blk", &staging).await,
        Err(Code::FailedPrecondition),
        "still published"
    );
    env.unpublish("pvc-blk", &target).await.unwrap();
    assert!(!Path::new(&target).exists());
    env.unstage("pvc-blk", &staging).await.unwrap();
    assert!(env.mounts().is_empty());
    assert!(!block_vol::staged_device(Path::new(&staging)).exists());
}

#[tokio::test]
async fn restarted_plugin_rebuilds_state_from_mountinfo() {
    let mut env = Env::new();
    env.volume("pvc-r", 32 << 20).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let (staging, target) = (env.path("plugins/r/globalmount"), env.path("pods/r/mount"));
    env.stage("pvc-r", &staging, cap.clone()).await.unwrap();
    env.publish("pvc-r", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    // A new service knows nothing in memory.
    env.svc = Env::service(env.dir.path(), &env.backend, &env.cluster);
    env.stage("pvc-r", &staging, cap.clone()).await.unwrap();
    env.publish("pvc-r", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    assert_eq!(env.mounts().len(), 2);
    env.unpublish("pvc-r", &target).await.unwrap();
    env.unstage("pvc-r", &staging).await.unwrap();
    assert!(env.mounts().is_empty());
    assert!(env.backend.table.lock().unwrap().is_empty());
}

#[tokio::test]
async fn conflicts_and_refusals() {
    let env = Env::new();
    env.volume("pvc-c", 32 << 20).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");
    let (staging, other) = (
        env.path("plugins/c/globalmount"),
        env.path("plugins/d/globalmount"),
    );
    env.stage("pvc-c", &staging, cap.clone()).await.unwrap();
    assert_eq!(
        env.stage("pvc-c", &other, cap.clone()).await,
        Err(Code::FailedPrecondition)
    );
    // Unstage at the wrong path leaves the real staging alone.
    env.unstage("pvc-c", &other).await.unwrap();
    assert_eq!(env.mounts().len(), 1);
    assert_eq!(env.backend.table.lock().unwrap().len(), 1);
    // Publish from a path that is not staged.
    assert_eq!(
        env.publish(
            "pvc-c",
            &other,
            &env.path("pods/x/mount"),
            cap.clone(),
            false
        )
        .await,
        Err(Code::FailedPrecondition)
    );
    // Paths outside the root.
    assert_eq!(
        env.publish("pvc-c", &staging, "/tmp/cairn-evil", cap.clone(), false)
            .await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        env.stage("pvc-c", "relative/path", cap.clone()).await,
        Err(Code::InvalidArgument)
    );
    // SINGLE_NODE_SINGLE_WRITER refuses a second target.
    let sw = mount_cap(Mode::SingleNodeSingleWriter, "");
    env.publish(
        "pvc-c",
        &staging,
        &env.path("pods/1/mount"),
        sw.clone(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        env.publish("pvc-c", &staging, &env.path("pods/2/mount"), sw, false)
            .await,
        Err(Code::FailedPrecondition)
    );
    // A concurrent operation on the volume is ABORTED.
    let held = env.svc.limiter.try_acquire("pvc-c").unwrap();
    assert_eq!(
        env.unpublish("pvc-c", &env.path("pods/1/mount")).await,
        Err(Code::Aborted)
    );
    drop(held);
    env.unpublish("pvc-c", &env.path("pods/1/mount"))
        .await
        .unwrap();
    env.unstage("pvc-c", &staging).await.unwrap();
    // Unknown volume.
    assert_eq!(
        env.stage("pvc-unknown", &other, cap).await,
        Err(Code::NotFound)
    );
    assert!(env.mounts().is_empty());
}

#[tokio::test]
async fn existing_foreign_filesystem_is_refused_and_rolled_back() {
    let env = Env::new();
    env.volume("pvc-xfs", 320 << 20).await;
    let staging = env.path("plugins/f/globalmount");
    // Format as xfs first.
    env.stage(
        "pvc-xfs",
        &staging,
        mount_cap(Mode::SingleNodeWriter, "xfs"),
    )
    .await
    .unwrap();
    let m = mount::read_mountinfo().unwrap();
    assert_eq!(
        mount::mount_at(&m, Path::new(&staging)).unwrap().fs_type,
        "xfs"
    );
    env.unstage("pvc-xfs", &staging).await.unwrap();
    // Asking for ext4 on it: refused, nothing mounted, device detached.
    assert_eq!(
        env.stage(
            "pvc-xfs",
            &staging,
            mount_cap(Mode::SingleNodeWriter, "ext4")
        )
        .await,
        Err(Code::FailedPrecondition)
    );
    assert!(env.mounts().is_empty());
    assert!(
        env.backend.table.lock().unwrap().is_empty(),
        "rolled back: detached"
    );
    // Without an explicit fsType the existing xfs is mounted as is.
    env.stage("pvc-xfs", &staging, mount_cap(Mode::SingleNodeWriter, ""))
        .await
        .unwrap();
    env.unstage("pvc-xfs", &staging).await.unwrap();
}

/// Whether this process may grow a mounted ext4 (EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE).
pub(crate) fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    const CAP_SYS_RESOURCE: u32 = 24;
    u64::from_str_radix(eff, 16).unwrap() & (1 << CAP_SYS_RESOURCE) != 0
}

async fn expand(
    env: &Env,
    id: &str,
    path: &str,
    required: i64,
) -> std::result::Result<i64, Status> {
    env.svc
        .node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: required,
                limit_bytes: 0,
            }),
            ..Default::default()
        }))
        .await
        .map(|r| r.into_inner().capacity_bytes)
}

#[tokio::test]
async fn online_expansion_and_stats() {
    let env = Env::new();
    env.volume("pvc-g", 320 << 20).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "xfs");
    let (staging, target) = (env.path("plugins/g/globalmount"), env.path("pods/g/mount"));
    env.stage("pvc-g", &staging, cap.clone()).await.unwrap();
    env.publish("pvc-g", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    let stats = |path: &str| {
        env.svc
            .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: "pvc-g".into(),
                volume_path: path.into(),
                ..Default::default()
            }))
    };
    let before = stats(&target).await.unwrap().into_inner();
    assert!(!before.volume_condition.as_ref().unwrap().abnormal);
    let total_before = before.usage[0].total;
    env.cluster.resize_volume("pvc-g", 448 << 20).await.unwrap();
    assert_eq!(
        expand(&env, "pvc-g", &target, 448 << 20).await.unwrap(),
        448 << 20
    );
    let after = stats(&target).await.unwrap().into_inner();
    assert!(
        after.usage[0].total > total_before + (100 << 20),
        "{} -> {}",
        total_before,
        after.usage[0].total
    );
    // Degraded volume: abnormal condition.
    env.cluster.set_health("pvc-g", pb::VolumeHealth::Degraded);
    let c = stats(&target)
        .await
        .unwrap()
        .into_inner()
        .volume_condition
        .unwrap();
    assert!(c.abnormal && c.message.contains("degraded"), "{c:?}");
    // Wrong or missing paths.
    assert_eq!(stats("some/path").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        stats(&env.path("pods/none")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        expand(&env, "pvc-g", &target, 1 << 30)
            .await
            .unwrap_err()
            .code(),
        Code::OutOfRange
    );
    assert_eq!(
        expand(&env, "pvc-none", "some/path", 1 << 30)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    env.unpublish("pvc-g", &target).await.unwrap();
    env.unstage("pvc-g", &staging).await.unwrap();
}

#[tokio::test]
async fn ext4_online_growth() {
    let env = Env::new();
    env.volume("pvc-e", 64 << 20).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let (staging, target) = (env.path("plugins/e/globalmount"), env.path("pods/e/mount"));
    env.stage("pvc-e", &staging, cap.clone()).await.unwrap();
    env.publish("pvc-e", &staging, &target, cap.clone(), false)
        .await
        .unwrap();
    env.cluster.resize_volume("pvc-e", 128 << 20).await.unwrap();
    let r = expand(&env, "pvc-e", &target, 128 << 20).await;
    let device = env.backend.table.lock().unwrap()["pvc-e"]
        .device_path
        .clone();
    // The device grew either way (RefreshSize ran before resize2fs).
    assert_eq!(
        block_vol::device_size(Path::new(&device)).unwrap(),
        128 << 20
    );
    if has_cap_sys_resource() {
        assert_eq!(r.unwrap(), 128 << 20);
        let s = nix::sys::statvfs::statvfs(target.as_str()).unwrap();
        assert!(s.blocks() as u64 * s.fragment_size() > 100 << 20);
    } else {
        // Sandboxes without CAP_SYS_RESOURCE: the kernel refuses the online resize ioctl.
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(
            e.message().contains("resize2fs") && e.message().contains("Permission denied"),
            "{e:?}"
        );
    }
    env.unpublish("pvc-e", &target).await.unwrap();
    env.unstage("pvc-e", &staging).await.unwrap();
}

#[tokio::test]
async fn node_info_reports_zone() {
    let env = Env::new();
    let info = env
        .svc
        .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(info.max_volumes_per_node, 16);
    let seg = info.accessible_topology.unwrap().segments;
    assert_eq!(seg[TOPOLOGY_NODE_KEY], "node-1");
    assert_eq!(seg[TOPOLOGY_ZONE_KEY], "zone-a");
    let caps = env
        .svc
        .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 5);
}
