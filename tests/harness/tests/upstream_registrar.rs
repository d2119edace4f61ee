//! The kubelet's plugin registration against the upstream csi-node-driver-registrar binary
//! (`CAIRN_UPSTREAM_REGISTRAR`), registering a real cairn-csi node plugin; skipped with a message
//! saying how to build it when the binary is not on the machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_harness::cluster::kubelet_root;
use cairn_harness::components::{DRIVER, find_binary};
use cairn_storaged::testkit::{ProcCluster, sibling_bin};
use cairn_storaged::tls::Identity;
use common::*;

/// The variable naming the registrar binary.
const ENV: &str = "CAIRN_UPSTREAM_REGISTRAR";

const HOW: &str = "build it from github.com/kubernetes-csi/node-driver-registrar v2.13.0 (the \
                   version manifests/04-csi-node.yaml names; Go >= 1.23, e.g. Debian \
                   bookworm-backports' golang-1.23-go): `GOFLAGS=-mod=vendor go build -o \
                   /var/tmp/upstream/csi-node-driver-registrar ./cmd/csi-node-driver-registrar`, \
                   then CAIRN_UPSTREAM_REGISTRAR=/var/tmp/upstream/csi-node-driver-registrar";

/// The registrar binary, or None after saying why the test is skipped.
fn registrar_bin() -> Option<PathBuf> {
    match std::env::var_os(ENV).map(PathBuf::from) {
        Some(p) if p.is_file() => Some(p),
        Some(p) => {
            eprintln!("SKIPPED: {ENV}={} is not a file; {HOW}", p.display());
            None
        }
        None => {
            eprintln!("SKIPPED: {ENV} is not set; {HOW}");
            None
        }
    }
}

/// node-1's CSINode drivers, "<names> <node ids>"; None while there is no CSINode.
async fn csinode_drivers(t: &TestCluster) -> Option<String> {
    let path = "jsonpath={.spec.drivers[*].name} {.spec.drivers[*].nodeID}";
    let out = t.kubectl(&["get", "csinode", "node-1", "-o", path]).await;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_registrar_registers_cairn_csi() {
    let Some(registrar) = registrar_bin() else {
        return;
    };
    let csi_bin = find_binary("cairn-csi").filter(|p| p.is_file());
    let storaged_bin = sibling_bin("storaged");
    assert!(
        csi_bin.is_some() && storaged_bin.is_file(),
        "cairn-csi and storaged not built: run `cargo build --workspace` first"
    );
    let storaged = ProcCluster::start_in(Path::new("/var/tmp"), &storaged_bin, 1, &[]).unwrap();
    storaged
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("storaged up");
    let t = TestCluster::start(1).await;
    let root = kubelet_root(&t.dir.path().join("data"), "node-1");
    let logs = t.dir.path();

    // cairn-csi's socket lies outside `<root>/plugins/*/csi.sock`, where the harness kubelet
    // would find it without any registrar: only the registration can tell the kubelet of it.
    let sock = root.join("elsewhere/csi.cairn.dev/csi.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    let tls = storaged
        .tls_dir(&Identity::CsiNode("node-1".into()))
        .unwrap();
    let csi = Proc::spawn(
        Command::new(csi_bin.unwrap())
            .args(["--mode", "node", "--node-id", "node-1", "--storaged"])
            .arg(storaged.addrs().join(","))
            .arg("--endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--kubelet-root")
            .arg(&root)
            .arg("--tls-dir")
            .arg(&tls),
        &logs.join("cairn-csi.log"),
    );
    eventually("cairn-csi's socket", Duration::from_secs(30), || async {
        assert!(csi.exited().is_none(), "cairn-csi exited; see its log");
        sock.exists().then_some(())
    })
    .await;
    let before = eventually("node-1's CSINode", Duration::from_secs(30), || {
        csinode_drivers(&t)
    })
    .await;
    assert_eq!(before, "", "no driver before the registrar runs");

    // The registrar as the node DaemonSet runs it, with the host's paths; first with a
    // registration path where no plugin answers: the kubelet refuses it and it exits 1,
    // leaving its socket file, as a registrar whose driver is not ready yet does.
    let reg_dir = root.join("plugins_registry");
    let reg_sock = reg_dir.join(format!("{DRIVER}-reg.sock"));
    let registrar_at = |kubelet_path: &str, log: &str| {
        Proc::spawn(
            Command::new(&registrar)
                .arg(format!("--csi-address={}", sock.display()))
                .arg(format!("--kubelet-registration-path={kubelet_path}"))
                .arg(format!("--plugin-registration-path={}", reg_dir.display()))
                .arg("--v=5"),
            &logs.join(log),
        )
    };
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    let refused = registrar_at("/var/lib/kubelet/elsewhere/nothing.sock", "refused.log");
    let status = eventually(
        "the refused registrar exits",
        Duration::from_secs(60),
        || async { refused.exited() },
    )
    .await;
    assert_eq!(status.code(), Some(1), "{}", read("refused.log"));
    assert!(
        read("refused.log").contains("PluginRegistered:false"),
        "{}",
        read("refused.log")
    );
    assert!(
        reg_sock.exists(),
        "the refused registrar's socket file stays"
    );
    assert_eq!(csinode_drivers(&t).await.as_deref(), Some(""));

    // Restarted with the plugin's path, it replaces the socket: registered this time.
    let reg = registrar_at(
        "/var/lib/kubelet/elsewhere/csi.cairn.dev/csi.sock",
        "registrar.log",
    );
    let log = || read("registrar.log");
    let want = format!("{DRIVER} node-1");
    eventually(
        "CSINode lists csi.cairn.dev, registered by the upstream registrar",
        Duration::from_secs(60),
        || async {
            assert!(reg.exited().is_none(), "the registrar exited:\n{}", log());
            (csinode_drivers(&t).await? == want).then_some(())
        },
    )
    .await;
    assert!(
        reg_sock.exists(),
        "registration socket {}",
        reg_sock.display()
    );
    // The kubelet told the registrar it is registered (upstream logs the status it received).
    eventually(
        "the registrar heard NotifyRegistrationStatus",
        Duration::from_secs(30),
        || async { log().contains("PluginRegistered:true").then_some(()) },
    )
    .await;
    let topology = t
        .must(&[
            "get",
            "csinode",
            "node-1",
            "-o",
            "jsonpath={.spec.drivers[0].topologyKeys}",
        ])
        .await;
    assert!(topology.contains("topology.cairn.dev/node"), "{topology}");

    // The registrar stopped removes its socket; the kubelet then drops the driver.
    reg.stop();
    assert!(
        !reg_sock.exists(),
        "the registrar left {}",
        reg_sock.display()
    );
    eventually(
        "CSINode without the driver",
        Duration::from_secs(30),
        || async { csinode_drivers(&t).await?.is_empty().then_some(()) },
    )
    .await;
    csi.stop();
    t.shutdown().await;
    drop(storaged);
}
