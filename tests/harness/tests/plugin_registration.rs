//! The kubelet's plugin registration against a registrar that follows pluginregistration.v1:
//! GetInfo, NotifyRegistrationStatus, CSINode from NodeGetInfo, and the volume limit.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_harness::cluster::kubelet_root;
use cairn_harness::kubelet::plugins::api;
use cairn_proto::csi::v1 as csi;
use common::*;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// A registrar: answers GetInfo with `info` and reports what the kubelet told it.
struct Registrar {
    info: api::PluginInfo,
    told: mpsc::UnboundedSender<api::RegistrationStatus>,
}

#[tonic::async_trait]
impl api::registration_server::Registration for Registrar {
    async fn get_info(
        &self,
        _: Request<api::InfoRequest>,
    ) -> Result<Response<api::PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }
    async fn notify_registration_status(
        &self,
        r: Request<api::RegistrationStatus>,
    ) -> Result<Response<api::RegistrationStatusResponse>, Status> {
        let _ = self.told.send(r.into_inner());
        Ok(Response::new(api::RegistrationStatusResponse {}))
    }
}

/// A CSI node plugin that only identifies itself (name, node id, topology, volume limit).
struct NodePlugin;

const DRIVER: &str = "csi.registered.test";

#[tonic::async_trait]
impl csi::identity_server::Identity for NodePlugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER.into(),
            vendor_version: "1.0.0".into(),
            manifest: HashMap::new(),
        }))
    }
    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse::default()))
    }
    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse::default()))
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for NodePlugin {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_publish_volume(
        &self,
        _: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_unpublish_volume(
        &self,
        _: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("identity only"))
    }
    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse::default()))
    }
    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: "node-1-id".into(),
            max_volumes_per_node: 1,
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([("topology.registered.test/zone".into(), "z1".into())]),
            }),
        }))
    }
}

/// Serves `router` on a fresh Unix socket at `path` until the task is aborted.
fn serve(path: &Path, router: tonic::transport::server::Router) -> tokio::task::JoinHandle<()> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    })
}

fn registrar(
    path: &Path,
    versions: &[&str],
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<api::RegistrationStatus>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let info = api::PluginInfo {
        r#type: "CSIPlugin".into(),
        name: DRIVER.into(),
        endpoint: "/var/lib/kubelet/elsewhere/csi.sock".into(),
        supported_versions: versions.iter().map(|v| v.to_string()).collect(),
    };
    let svc = api::registration_server::RegistrationServer::new(Registrar { info, told: tx });
    let router = tonic::transport::Server::builder().add_service(svc);
    (serve(path, router), rx)
}

async fn told(
    rx: &mut mpsc::UnboundedReceiver<api::RegistrationStatus>,
) -> api::RegistrationStatus {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the kubelet notified the registrar in time")
        .expect("a status")
}

fn claim_and_volume(n: u32) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: reg-pv-{n}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  claimRef: {{namespace: default, name: reg-claim-{n}}}
  csi: {{driver: {DRIVER}, volumeHandle: vol-{n}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: reg-claim-{n}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: reg-pv-{n}
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: reg-pod-{n}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: c, image: busybox, command: ["sleep", "600"], volumeMounts: [{{name: v, mountPath: /v}}]}}
  volumes:
  - {{name: v, persistentVolumeClaim: {{claimName: reg-claim-{n}}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrar_registers_its_plugin_and_the_limit_holds() {
    let t = TestCluster::start(1).await;
    let root: PathBuf = kubelet_root(&t.dir.path().join("data"), "node-1");
    let plugin = serve(
        &root.join("elsewhere/csi.sock"),
        tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(NodePlugin))
            .add_service(csi::node_server::NodeServer::new(NodePlugin)),
    );

    // A registrar for an unsupported CSI version is refused, with the reason.
    let sock = root.join(format!("plugins_registry/{DRIVER}-reg.sock"));
    let (old, mut old_rx) = registrar(&sock, &["0.3.0"]);
    let verdict = told(&mut old_rx).await;
    assert!(
        !verdict.plugin_registered && verdict.error.contains("0.3.0"),
        "{verdict:?}"
    );
    // It exits leaving its socket file, and its restart binds a new socket at the same path
    // (as the upstream registrar does after a refusal): a new registration.
    old.abort();
    assert!(sock.exists(), "the refused registrar's socket file stays");
    let (reg, mut rx) = registrar(&sock, &["1.0.0"]);
    let verdict = told(&mut rx).await;
    assert!(verdict.plugin_registered, "{verdict:?}");
    let driver = "jsonpath={.spec.drivers[*].name} {.spec.drivers[*].nodeID} {.spec.drivers[*].allocatable.count} {.spec.drivers[*].topologyKeys[*]}";
    let want = format!("{DRIVER} node-1-id 1 topology.registered.test/zone");
    eventually(
        "CSINode lists the registered driver",
        Duration::from_secs(30),
        || async {
            let got = t.must(&["get", "csinode", "node-1", "-o", driver]).await;
            (got == want).then_some(())
        },
    )
    .await;

    // The node takes one volume of this driver: a second pod with another one waits.
    for n in [1, 2] {
        let out = t
            .kubectl_stdin(&["apply", "-f", "-"], &claim_and_volume(n))
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if n == 1 {
            eventually(
                "the first pod scheduled",
                Duration::from_secs(30),
                || async {
                    let node = t
                        .must(&["get", "pod", "reg-pod-1", "-o", "jsonpath={.spec.nodeName}"])
                        .await;
                    (node == "node-1").then_some(())
                },
            )
            .await;
        }
    }
    let msg = eventually("the second pod unschedulable", Duration::from_secs(30), || async {
        let m = t
            .must(&["get", "pod", "reg-pod-2", "-o", "jsonpath={.spec.nodeName}|{.status.conditions[?(@.type==\"PodScheduled\")].message}"])
            .await;
        m.contains("exceed max volume count").then_some(m)
    })
    .await;
    assert!(msg.starts_with('|'), "not placed: {msg}");

    // The registration socket gone, the driver leaves CSINode.
    reg.abort();
    std::fs::remove_file(&sock).unwrap();
    eventually(
        "CSINode without the driver",
        Duration::from_secs(30),
        || async {
            let got = t
                .must(&[
                    "get",
                    "csinode",
                    "node-1",
                    "-o",
                    "jsonpath={.spec.drivers[*].name}",
                ])
                .await;
            got.is_empty().then_some(())
        },
    )
    .await;
    t.must(&["delete", "pod", "reg-pod-1", "reg-pod-2", "--wait=false"])
        .await;
    plugin.abort();
    t.shutdown().await;
}
