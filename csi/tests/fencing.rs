//! Write fencing end to end with real storaged and cairn-csi node plugins: a node cut off
//! by ControllerUnpublish (never unstaged) gets EIO from its device once the volume is
//! published elsewhere, and the new node's data stays intact byte for byte.

mod common;

use std::path::Path;
use std::process::Command;

use cairn_proto::csi::v1 as csi;
use common::*;
use csi::volume_capability::access_mode::Mode;

const MIB: i64 = 1 << 20;

/// `dd` of `count` MiB from `src` onto the block device `dev`, direct and synced;
/// returns whether it succeeded, and its stderr.
fn dd_onto(src: &Path, dev: &Path, count: i64) -> (bool, String) {
    let out = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dev.display()))
        .args(["bs=1M", &format!("count={count}")])
        .args(["oflag=direct", "conv=fsync,notrunc", "status=none"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn device_sha(dev: &Path, count: i64) -> String {
    sh(&format!(
        "dd if={} bs=1M count={count} iflag=direct status=none | sha256sum",
        dev.display()
    ))
}

fn random_file(cluster: &Cluster, name: &str, mib: i64) -> std::path::PathBuf {
    let p = cluster.dir.path().join(name);
    sh(&format!(
        "head -c {} /dev/urandom > {}",
        mib * MIB,
        p.display()
    ));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_gets_eio_and_the_new_nodes_data_is_intact() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_a = Plugin::node(&cluster, 0).await;
    let node_b = Plugin::node(&cluster, 1).await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = "pvc-fenced";
    ctrl.ctrl()
        .await
        .create_volume(create_req(id, 16 * MIB, cap.clone(), &[("replicas", "3")]))
        .await
        .expect("CreateVolume");

    let ctx_a = controller_publish(&ctrl, id, "node-1", &cap).await.unwrap();
    assert!(ctx_a.contains_key("cairn.dev/generation"), "{ctx_a:?}");
    let (_staging_a, dev_a) =
        stage_and_publish(&node_a, &cluster, 0, id, ctx_a, cap.clone(), "pod-a").await;
    let data_a = random_file(&cluster, "a.bin", 4);
    let (ok, err) = dd_onto(&data_a, &dev_a, 4);
    assert!(ok, "node-1 writes while it holds the publish: {err}");

    // Node-1 is cut off: unpublished by the controller, never unstaged.
    controller_unpublish(&ctrl, id, "node-1").await;
    let ctx_b = controller_publish(&ctrl, id, "node-2", &cap).await.unwrap();
    let (_staging_b, dev_b) =
        stage_and_publish(&node_b, &cluster, 1, id, ctx_b, cap.clone(), "pod-b").await;
    let data_b = random_file(&cluster, "b.bin", 4);
    let (ok, err) = dd_onto(&data_b, &dev_b, 4);
    assert!(ok, "node-2 writes: {err}");
    let want = sha256_file(&data_b);

    let (ok, err) = dd_onto(&data_a, &dev_a, 4);
    assert!(!ok, "node-1's stale writes are refused");
    assert!(
        err.contains("Input/output error"),
        "the kernel sees EIO: {err}"
    );
    assert_eq!(
        device_sha(&dev_b, 4).split_whitespace().next().unwrap(),
        want,
        "node-2's data is intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_publish_refuses_writes() {
    let cluster = Cluster::start(3).await;
    let ctrl = Plugin::controller(&cluster).await;
    let node_a = Plugin::node(&cluster, 0).await;
    let cap = block_cap(Mode::SingleNodeWriter);
    let id = "pvc-ro";
    ctrl.ctrl()
        .await
        .create_volume(create_req(id, 16 * MIB, cap.clone(), &[("replicas", "3")]))
        .await
        .expect("CreateVolume");
    let ro = ctrl
        .ctrl()
        .await
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: id.into(),
            node_id: "node-1".into(),
            volume_capability: Some(cap.clone()),
            readonly: true,
            ..Default::default()
        })
        .await
        .expect("ControllerPublish read-only")
        .into_inner()
        .publish_context;
    let generation: u64 = ro["cairn.dev/generation"].parse().unwrap();
    // storaged itself refuses, whatever the mount's flag: a write under the generation.
    let client =
        cairn_client::VolumeClient::new(cluster.endpoints(), cluster.security("admin")).unwrap();
    let refused = client
        .write_as(
            id,
            0,
            prost::bytes::Bytes::from(vec![1u8; 4096]),
            generation,
        )
        .await
        .expect_err("a read-only publish does not write");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let staging = cluster.staging_path(0, id);
    node_a
        .node_rpc()
        .await
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            publish_context: ro,
            staging_target_path: staging.to_str().unwrap().into(),
            volume_capability: Some(cap),
            ..Default::default()
        })
        .await
        .expect("NodeStage read-only");
    let att = cluster
        .node_client(0)
        .list_attachments()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.volume == id)
        .expect("attached");
    assert_eq!(att.generation, generation, "the attachment carries it");
    assert!(att.readonly);
}
