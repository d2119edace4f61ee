//! Every refusal issue 3 lists, over the real sockets, asserting the exact gRPC code;
//! plus Probe without storaged (and `cairn-csi probe`, the exec probe) and the identity answers.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::symlink;

use cairn_proto::csi::v1 as csi;
use common::*;
use csi::volume_capability::access_mode::Mode;
use tonic::Code;

const MIB: i64 = 1 << 20;

#[tokio::test]
async fn probe_is_not_ready_without_storaged() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    // Something stale at the socket path must be replaced.
    std::fs::write(&sock, b"stale").unwrap();
    let mut child = std::process::Command::new(csi_bin())
        .args([
            "--mode",
            "controller",
            "--storaged",
            "127.0.0.1:1",
            "--insecure",
        ])
        .arg("--endpoint")
        .arg(format!("unix://{}", sock.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ch = wait_for("socket", STARTUP, || {
        let sock = sock.clone();
        async move { connect(&sock).await.ok() }
    })
    .await;
    let mut id = csi::identity_client::IdentityClient::new(ch);
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.cairn.dev");
    assert!(!info.vendor_version.is_empty());
    let probe = id.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(false));

    // The exec probe of the manifests: alive (it answers), not ready (storaged is away).
    let endpoint = format!("unix://{}", sock.display());
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(csi_bin())
            .args(["probe", "--timeout", "5", "--endpoint", &endpoint])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&[]), (Some(0), String::new()));
    let (code, err) = run(&["--ready"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not ready"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("connect"), "{err}");
    let out = std::process::Command::new(csi_bin())
        .args(["probe", "--endpoint", "relative.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute"));
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_spec_codes() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node = Plugin::node(&cluster, 0).await;
    let mut c = ctrl.ctrl().await;
    let mut n = node.node_rpc().await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");

    // CreateVolume.
    assert_eq!(
        code(c.create_volume(create_req("", MIB, cap.clone(), &[])).await),
        Code::InvalidArgument
    );
    let mut nocaps = create_req("pvc-x", MIB, cap.clone(), &[]);
    nocaps.volume_capabilities.clear();
    assert_eq!(code(c.create_volume(nocaps).await), Code::InvalidArgument);
    let e = c
        .create_volume(create_req("pvc-x", MIB, cap.clone(), &[("speed", "fast")]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("speed"), "{}", e.message());
    assert_eq!(
        code(
            c.create_volume(create_req(
                "pvc-x",
                MIB,
                cap.clone(),
                &[("csi.storage.k8s.io/pvc/name", "data")]
            ))
            .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            c.create_volume(create_req("pvc-x", 2 * MIB, cap.clone(), &[]))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.create_volume(create_req(
                "pvc-rwx",
                MIB,
                mount_cap(Mode::MultiNodeMultiWriter, ""),
                &[]
            ))
            .await
        ),
        Code::InvalidArgument
    );
    let mut bad_range = create_req("pvc-y", 0, cap.clone(), &[]);
    bad_range.capacity_range = Some(csi::CapacityRange {
        required_bytes: 4 * MIB,
        limit_bytes: 2 * MIB,
    });
    assert_eq!(code(c.create_volume(bad_range).await), Code::OutOfRange);
    let mut nowhere = create_req("pvc-z", MIB, cap.clone(), &[]);
    nowhere.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [("topology.cairn.dev/node".to_string(), "node-9".to_string())].into(),
        }],
        preferred: vec![],
    });
    assert_eq!(
        code(c.create_volume(nowhere).await),
        Code::ResourceExhausted
    );

    // DeleteVolume.
    assert_eq!(
        code(c.delete_volume(csi::DeleteVolumeRequest::default()).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_volume(csi::DeleteVolumeRequest {
                volume_id: "pvc-never".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Ok
    );

    // ControllerPublish.
    let publish = |id: &str, node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    assert_eq!(
        code(c.controller_publish_volume(publish("", "node-1")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.controller_publish_volume(publish("pvc-x", "")).await),
        Code::InvalidArgument
    );
    let mut nocap = publish("pvc-x", "node-1");
    nocap.volume_capability = None;
    assert_eq!(
        code(c.controller_publish_volume(nocap).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish("pvc-none", "node-1"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller_publish_volume(publish("pvc-x", "node-9"))
                .await
        ),
        Code::NotFound
    );
    let ctx = c
        .controller_publish_volume(publish("pvc-x", "node-1"))
        .await
        .unwrap()
        .into_inner()
        .publish_context;
    assert_eq!(
        code(
            c.controller_publish_volume(publish("pvc-x", "node-2"))
                .await
        ),
        Code::FailedPrecondition
    );
    let unpublish = |id: &str, node: &str| csi::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    };
    assert_eq!(
        code(c.controller_unpublish_volume(unpublish("", "node-1")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller_unpublish_volume(unpublish("pvc-none", "node-1"))
                .await
        ),
        Code::Ok
    );

    // Validate, list, get, expand, snapshots.
    let validate =
        |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: caps,
            ..Default::default()
        };
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate("pvc-none", vec![cap.clone()]))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.validate_volume_capabilities(validate("pvc-x", vec![]))
                .await
        ),
        Code::InvalidArgument
    );
    let r = c
        .validate_volume_capabilities(validate("pvc-x", vec![cap.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.confirmed.is_some());
    assert_eq!(
        code(
            c.list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: "not-a-token".into()
            })
            .await
        ),
        Code::Aborted
    );
    let page = c
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let e = page
        .entries
        .iter()
        .find(|e| e.volume.as_ref().unwrap().volume_id == "pvc-x")
        .unwrap();
    assert_eq!(e.status.as_ref().unwrap().published_node_ids, ["node-1"]);
    assert_eq!(
        code(
            c.controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: "pvc-none".into()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: "pvc-x".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    // Snapshots: missing fields, an unknown source volume or snapshot.
    assert_eq!(
        code(
            c.create_snapshot(csi::CreateSnapshotRequest {
                name: "s".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: "pvc-none".into(),
                name: "s".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    let mut from_missing = create_req("pvc-restored", MIB, cap.clone(), &[]);
    from_missing.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "no-such-snapshot".into(),
            },
        )),
    });
    assert_eq!(code(c.create_volume(from_missing).await), Code::NotFound);

    // Node: missing fields.
    let staging = cluster.staging_path(0, "pvc-x");
    let stage =
        |id: &str, path: &str, cap: Option<csi::VolumeCapability>| csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            publish_context: ctx.clone(),
            staging_target_path: path.into(),
            volume_capability: cap,
            ..Default::default()
        };
    let sp = staging.to_str().unwrap();
    assert_eq!(
        code(n.node_stage_volume(stage("", sp, Some(cap.clone()))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            n.node_stage_volume(stage("pvc-x", "", Some(cap.clone())))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_stage_volume(stage("pvc-x", sp, None)).await),
        Code::InvalidArgument
    );
    // Paths outside the kubelet root, with `..`, or through a symlink.
    let outside = cluster.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    assert_eq!(
        code(
            n.node_stage_volume(stage("pvc-x", outside.to_str().unwrap(), Some(cap.clone())))
                .await
        ),
        Code::InvalidArgument
    );
    let dotdot = format!(
        "{}/../../outside",
        cluster.kubelet_root(0).join("plugins").display()
    );
    assert_eq!(
        code(
            n.node_stage_volume(stage("pvc-x", &dotdot, Some(cap.clone())))
                .await
        ),
        Code::InvalidArgument
    );
    let link = cluster.kubelet_root(0).join("plugins/escape");
    symlink(&outside, &link).unwrap();
    let via_link = link.join("globalmount");
    assert_eq!(
        code(
            n.node_stage_volume(stage(
                "pvc-x",
                via_link.to_str().unwrap(),
                Some(cap.clone())
            ))
            .await
        ),
        Code::InvalidArgument
    );
    assert!(
        mounts_under(&outside).is_empty(),
        "nothing was mounted outside the root"
    );
    // Unknown volume.
    let other = cluster.staging_path(0, "pvc-none");
    assert_eq!(
        code(
            n.node_stage_volume(stage(
                "pvc-none",
                other.to_str().unwrap(),
                Some(cap.clone())
            ))
            .await
        ),
        Code::NotFound
    );
    assert!(
        mounts_under(&cluster.kubelet_root(0)).is_empty(),
        "a failed stage leaves no mount"
    );

    // Stage, then staging the same volume elsewhere is FAILED_PRECONDITION.
    n.node_stage_volume(stage("pvc-x", sp, Some(cap.clone())))
        .await
        .unwrap();
    n.node_stage_volume(stage("pvc-x", sp, Some(cap.clone())))
        .await
        .expect("stage is idempotent");
    let second = cluster.staging_path(0, "pvc-x-again");
    assert_eq!(
        code(
            n.node_stage_volume(stage("pvc-x", second.to_str().unwrap(), Some(cap.clone())))
                .await
        ),
        Code::FailedPrecondition
    );
    // Same path, incompatible capability.
    assert_eq!(
        code(
            n.node_stage_volume(stage("pvc-x", sp, Some(block_cap(Mode::SingleNodeWriter))))
                .await
        ),
        Code::AlreadyExists
    );

    // Publish: missing staging path, unstaged path, bad target.
    let target = cluster.target_path(0, "pod-n", "pvc-x");
    let publish_n = |staging: &str, target: &str| csi::NodePublishVolumeRequest {
        volume_id: "pvc-x".into(),
        publish_context: HashMap::new(),
        staging_target_path: staging.into(),
        target_path: target.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let tp = target.to_str().unwrap();
    assert_eq!(
        code(n.node_publish_volume(publish_n("", tp)).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            n.node_publish_volume(publish_n(second.to_str().unwrap(), tp))
                .await
        ),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(
            n.node_publish_volume(publish_n(sp, "/etc/cairn-target"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_publish_volume(publish_n(sp, "")).await),
        Code::InvalidArgument
    );
    n.node_publish_volume(publish_n(sp, tp)).await.unwrap();
    let mut ro = publish_n(sp, tp);
    ro.readonly = true;
    assert_eq!(code(n.node_publish_volume(ro).await), Code::AlreadyExists);

    // Unstage while still published is refused and changes nothing.
    let unstage = csi::NodeUnstageVolumeRequest {
        volume_id: "pvc-x".into(),
        staging_target_path: sp.into(),
    };
    assert_eq!(
        code(n.node_unstage_volume(unstage.clone()).await),
        Code::FailedPrecondition
    );
    assert_eq!(mounts_under(&cluster.kubelet_root(0)).len(), 2);

    // Stats.
    let stats = |id: &str, path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    };
    assert_eq!(
        code(n.node_get_volume_stats(stats("", tp)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("pvc-x", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("pvc-none", tp)).await),
        Code::NotFound
    );
    assert_eq!(
        code(n.node_get_volume_stats(stats("pvc-x", "some/path")).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            n.node_get_volume_stats(stats("pvc-x", outside.to_str().unwrap()))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            n.node_expand_volume(csi::NodeExpandVolumeRequest {
                volume_id: "pvc-none".into(),
                volume_path: "some/path".into(),
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );

    // NodeGetInfo: node id and zone.
    let info = n
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    let topo = info.accessible_topology.unwrap().segments;
    assert_eq!(topo["topology.cairn.dev/node"], "node-1");
    assert_eq!(topo["topology.kubernetes.io/zone"], "zone-a");

    unpublish_and_unstage(&node, "pvc-x", &staging, &target).await;
    assert!(mounts_under(&cluster.kubelet_root(0)).is_empty());
    c.controller_unpublish_volume(unpublish("pvc-x", "node-1"))
        .await
        .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: "pvc-x".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_limit_per_node_and_names_storaged_refuses() {
    let cluster = Cluster::start(3).await;
    let sock = cluster.dir.path().join("csi-limited.sock");
    let log = cluster.dir.path().join("csi-limited.log");
    let eps = cluster.endpoints().join(",");
    let ctrl = Plugin::start(
        &sock,
        &[
            "--mode",
            "controller",
            "--storaged",
            &eps,
            "--max-volumes-per-node",
            "1",
            "--tls-dir",
            cluster.tls_dir("controller").to_str().unwrap(),
        ],
        &log,
    )
    .await;
    let mut c = ctrl.ctrl().await;
    let cap = mount_cap(Mode::SingleNodeWriter, "");

    // Any CSI name is accepted; one storaged refuses maps to a stable id.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let v = c
            .create_volume(create_req("sanity vol+1/x", MIB, cap.clone(), &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ids.push(v.volume_id);
    }
    assert!(ids[0].starts_with("csi-"), "{}", ids[0]);
    assert_eq!(ids[0], ids[1], "idempotent by name");
    let odd = ids[0].clone();
    c.create_volume(create_req("pvc-second", MIB, cap.clone(), &[]))
        .await
        .unwrap();

    let publish = |id: &str, node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    c.controller_publish_volume(publish(&odd, "node-1"))
        .await
        .unwrap();
    assert_eq!(
        code(
            c.controller_publish_volume(publish("pvc-second", "node-1"))
                .await
        ),
        Code::ResourceExhausted,
        "node-1 already has its one volume"
    );
    // The same attachment again is not a new one; another node has room.
    c.controller_publish_volume(publish(&odd, "node-1"))
        .await
        .unwrap();
    c.controller_publish_volume(publish("pvc-second", "node-2"))
        .await
        .unwrap();

    for (id, node) in [(odd.as_str(), "node-1"), ("pvc-second", "node-2")] {
        c.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.into(),
            node_id: node.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// One certificate carries one identity: `--mode all` with a `--tls-dir` but no
/// `--node-tls-dir` would fail every attach, so it is refused at start, naming the flag; and
/// `--node-tls-dir` outside all mode is refused too.
#[test]
fn all_mode_with_tls_needs_the_node_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix://{}", dir.path().join("csi.sock").display());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(csi_bin())
            .args([
                "--storaged",
                "127.0.0.1:1",
                "--node-id",
                "node-1",
                "--endpoint",
                &sock,
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let tls = dir.path().join("tls");
    let tls = tls.to_str().unwrap();
    let (code, err) = run(&["--mode", "all", "--tls-dir", tls]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--node-tls-dir"), "{err}");
    let (code, err) = run(&["--mode", "node", "--tls-dir", tls, "--node-tls-dir", tls]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("only for --mode all"), "{err}");
    assert!(!dir.path().join("csi.sock").exists(), "nothing was served");
}
