//! End-to-end lifecycle over the CSI Unix sockets with real storaged processes, real loop
//! devices, mkfs and mounts: data moves between nodes, block mode, expansion, restart.

mod common;

use cairn_proto::csi::v1 as csi;
use common::*;
use csi::volume_capability::access_mode::Mode;
use tonic::Code;

const MIB: i64 = 1 << 20;

async fn delete(ctrl: &Plugin, id: &str) {
    for _ in 0..2 {
        ctrl.ctrl()
            .await
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("DeleteVolume (idempotent)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_volume_moves_between_nodes_with_fencing() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_a = Plugin::node(&cluster, 0).await;
    let node_b = Plugin::node(&cluster, 1).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");
    let id = "pvc-lifecycle";

    let vol = create(
        &ctrl,
        create_req(id, 64 * MIB, cap.clone(), &[("replicas", "3")]),
    )
    .await;
    assert_eq!(vol.volume_id, id);
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert_eq!(
        vol.accessible_topology.len(),
        3,
        "a replicated volume is reachable from every storaged node"
    );
    // Same request again: the same volume.
    assert_eq!(
        create(
            &ctrl,
            create_req(id, 64 * MIB, cap.clone(), &[("replicas", "3")])
        )
        .await,
        vol
    );

    let ctx = controller_publish(&ctrl, id, "node-1", &cap).await.unwrap();
    assert_eq!(
        controller_publish(&ctrl, id, "node-1", &cap).await.unwrap(),
        ctx,
        "publish is idempotent"
    );
    let (staging, target) =
        stage_and_publish(&node_a, &cluster, 0, id, ctx.clone(), cap.clone(), "pod-a").await;

    // Fencing: the volume is attached to node-1, so node-2 is refused.
    let fenced = controller_publish(&ctrl, id, "node-2", &cap)
        .await
        .unwrap_err();
    assert_eq!(fenced.code(), Code::FailedPrecondition);

    // Write files through the published path.
    std::fs::create_dir_all(target.join("dir")).unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(target.join("dir/data.bin"), &payload).unwrap();
    std::fs::write(target.join("hello.txt"), b"hello from node-1\n").unwrap();
    sh(&format!("sync -f {}", target.display()));
    let want = sha256_file(&target.join("dir/data.bin"));

    // Stats on the published path.
    let stats = node_a
        .node_rpc()
        .await
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert!(
        bytes.total > 40 * MIB && bytes.used >= 3_000_000,
        "{bytes:?}"
    );
    assert!(
        stats
            .usage
            .iter()
            .any(|u| u.unit == csi::volume_usage::Unit::Inodes as i32 && u.used > 0)
    );
    assert!(!stats.volume_condition.unwrap().abnormal);

    unpublish_and_unstage(&node_a, id, &staging, &target).await;
    assert!(
        mounts_under(&cluster.kubelet_root(0)).is_empty(),
        "no mount left on node-1"
    );
    let atts = cluster.node_client(0).list_attachments().await.unwrap();
    assert!(
        atts.iter().all(|a| a.volume != id),
        "storaged on node-1 detached the volume: {atts:?}"
    );
    controller_unpublish(&ctrl, id, "node-1").await;
    controller_unpublish(&ctrl, id, "node-1").await;

    // Now node-2 may have it, and the files are there.
    let ctx = controller_publish(&ctrl, id, "node-2", &cap).await.unwrap();
    let (staging_b, target_b) =
        stage_and_publish(&node_b, &cluster, 1, id, ctx, cap.clone(), "pod-b").await;
    assert_eq!(
        std::fs::read_to_string(target_b.join("hello.txt")).unwrap(),
        "hello from node-1\n"
    );
    assert_eq!(sha256_file(&target_b.join("dir/data.bin")), want);
    unpublish_and_unstage(&node_b, id, &staging_b, &target_b).await;
    controller_unpublish(&ctrl, id, "node-2").await;
    delete(&ctrl, id).await;
    assert!(mounts_under(&cluster.kubelet_root(1)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_round_trips_checksummed_data() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_a = Plugin::node(&cluster, 0).await;
    let node_b = Plugin::node(&cluster, 1).await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = "pvc-block";
    create(&ctrl, create_req(id, 32 * MIB, cap.clone(), &[])).await;

    let ctx = controller_publish(&ctrl, id, "node-1", &cap).await.unwrap();
    let (staging, target) =
        stage_and_publish(&node_a, &cluster, 0, id, ctx, cap.clone(), "pod-a").await;
    let src = cluster.dir.path().join("random.bin");
    sh(&format!(
        "head -c {} /dev/urandom > {}",
        8 * MIB,
        src.display()
    ));
    let want = sha256_file(&src);
    sh(&format!(
        "dd if={} of={} bs=1M count=8 oflag=direct conv=fsync status=none",
        src.display(),
        target.display()
    ));
    let read_back = |t: &std::path::Path| {
        sh(&format!(
            "dd if={} bs=1M count=8 iflag=direct status=none | sha256sum",
            t.display()
        ))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
    };
    assert_eq!(read_back(&target), want);
    // Capacity of a block volume comes from the device size.
    let stats = node_a
        .node_rpc()
        .await
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: target.to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 32 * MIB);

    unpublish_and_unstage(&node_a, id, &staging, &target).await;
    controller_unpublish(&ctrl, id, "node-1").await;
    let ctx = controller_publish(&ctrl, id, "node-2", &cap).await.unwrap();
    let (staging_b, target_b) =
        stage_and_publish(&node_b, &cluster, 1, id, ctx, cap.clone(), "pod-b").await;
    assert_eq!(
        read_back(&target_b),
        want,
        "data written on node-1 reads back on node-2"
    );
    unpublish_and_unstage(&node_b, id, &staging_b, &target_b).await;
    controller_unpublish(&ctrl, id, "node-2").await;
    delete(&ctrl, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_expansion_while_mounted() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_a = Plugin::node(&cluster, 0).await;
    for (id, fs, size, grown) in [
        ("pvc-grow-ext4", "ext4", 64 * MIB, 128 * MIB),
        ("pvc-grow-xfs", "xfs", 320 * MIB, 400 * MIB),
    ] {
        let cap = mount_cap(Mode::SingleNodeWriter, fs);
        create(
            &ctrl,
            create_req(id, size, cap.clone(), &[("replicas", "1")]),
        )
        .await;
        let ctx = controller_publish(&ctrl, id, "node-1", &cap).await.unwrap();
        let (staging, target) =
            stage_and_publish(&node_a, &cluster, 0, id, ctx, cap.clone(), "pod-grow").await;
        std::fs::write(target.join("before"), b"kept").unwrap();
        let total = || {
            nix::sys::statvfs::statvfs(&target)
                .map(|s| s.blocks() as i64 * s.fragment_size() as i64)
                .unwrap()
        };
        let before = total();
        assert!(before < size, "{fs}: {before}");

        let r = ctrl
            .ctrl()
            .await
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: grown,
                    limit_bytes: 0,
                }),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, grown);
        assert!(r.node_expansion_required);
        let n = node_a
            .node_rpc()
            .await
            .node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: id.into(),
                volume_path: target.to_str().unwrap().into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: grown,
                    limit_bytes: 0,
                }),
                staging_target_path: staging.to_str().unwrap().into(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await;
        if fs == "ext4" && !has_cap_sys_resource() {
            // ext4's online resize ioctl needs CAP_SYS_RESOURCE, which some sandboxes drop.
            let e = n.unwrap_err();
            assert_eq!(e.code(), Code::Internal);
            assert!(e.message().contains("Permission denied"), "{e:?}");
        } else {
            assert_eq!(n.unwrap().into_inner().capacity_bytes, grown);
            let after = total();
            assert!(
                after > before + (grown - size) / 2,
                "{fs}: filesystem grew online from {before} to {after}"
            );
        }
        assert_eq!(std::fs::read(target.join("before")).unwrap(), b"kept");
        unpublish_and_unstage(&node_a, id, &staging, &target).await;
        controller_unpublish(&ctrl, id, "node-1").await;
        delete(&ctrl, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_plugin_restart_keeps_mounts_and_teardown_is_idempotent() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let mut node_a = Plugin::node(&cluster, 0).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = "pvc-restart";
    create(&ctrl, create_req(id, 32 * MIB, cap.clone(), &[])).await;
    let ctx = controller_publish(&ctrl, id, "node-1", &cap).await.unwrap();
    let (staging, target) =
        stage_and_publish(&node_a, &cluster, 0, id, ctx.clone(), cap.clone(), "pod-r").await;
    std::fs::write(target.join("f"), b"survives a plugin restart").unwrap();

    node_a.crash_and_restart().await;
    // The mount lives in storaged and the kernel, not in the plugin.
    assert_eq!(
        std::fs::read(target.join("f")).unwrap(),
        b"survives a plugin restart"
    );
    // Stage and publish again are no-ops (state comes from mountinfo and storaged).
    let (s2, t2) = stage_and_publish(&node_a, &cluster, 0, id, ctx, cap.clone(), "pod-r").await;
    assert_eq!((s2.clone(), t2.clone()), (staging.clone(), target.clone()));
    let n = mounts_under(&cluster.kubelet_root(0));
    assert_eq!(n.len(), 2, "exactly the staging mount and the bind: {n:?}");

    unpublish_and_unstage(&node_a, id, &staging, &target).await;
    assert!(mounts_under(&cluster.kubelet_root(0)).is_empty());
    let atts = cluster.node_client(0).list_attachments().await.unwrap();
    assert!(atts.iter().all(|a| a.volume != id), "{atts:?}");
    controller_unpublish(&ctrl, id, "node-1").await;
    delete(&ctrl, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_volume_is_pinned_to_its_node() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_b = Plugin::node(&cluster, 1).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");
    let id = "pvc-local";
    let mut req = create_req(id, 48 * MIB, cap.clone(), &[("type", "local")]);
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [("topology.cairn.dev/node".to_string(), "node-2".to_string())].into(),
        }],
        preferred: vec![],
    });
    let vol = create(&ctrl, req).await;
    assert_eq!(vol.volume_context["type"], "local");
    assert_eq!(vol.accessible_topology.len(), 1);
    assert_eq!(
        vol.accessible_topology[0].segments["topology.cairn.dev/node"],
        "node-2"
    );
    assert_eq!(
        controller_publish(&ctrl, id, "node-1", &cap)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    let ctx = controller_publish(&ctrl, id, "node-2", &cap).await.unwrap();
    let (staging, target) =
        stage_and_publish(&node_b, &cluster, 1, id, ctx, cap.clone(), "pod-l").await;
    std::fs::write(target.join("local"), b"on node-2").unwrap();
    let atts = cluster.node_client(1).list_attachments().await.unwrap();
    let a = atts
        .iter()
        .find(|a| a.volume == id)
        .expect("attached on node-2");
    assert!(a.device_path.starts_with("/dev/loop"), "{a:?}");
    assert_eq!(a.size_bytes, 48 << 20);
    unpublish_and_unstage(&node_b, id, &staging, &target).await;
    controller_unpublish(&ctrl, id, "node-2").await;
    delete(&ctrl, id).await;
}

/// `--mode all` (the default mode) under mutual TLS: one process holds both certificates,
/// `controller` for the cluster and `csi-node:<node>` for its node's attach and detach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_mode_with_both_certificates_runs_the_whole_cycle() {
    let cluster = Cluster::start(3).await;
    let all = Plugin::all(&cluster, 0).await;
    let cap = mount_cap(Mode::SingleNodeWriter, "ext4");
    let id = "pvc-all-mode";
    create(&all, create_req(id, 32 * MIB, cap.clone(), &[])).await;
    let ctx = controller_publish(&all, id, "node-1", &cap).await.unwrap();
    let (staging, target) =
        stage_and_publish(&all, &cluster, 0, id, ctx, cap.clone(), "pod-all").await;
    std::fs::write(target.join("hello"), b"all mode").unwrap();
    assert_eq!(std::fs::read(target.join("hello")).unwrap(), b"all mode");
    unpublish_and_unstage(&all, id, &staging, &target).await;
    controller_unpublish(&all, id, "node-1").await;
    delete(&all, id).await;
}
