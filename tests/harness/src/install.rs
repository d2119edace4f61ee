//! `up --with-cairn` as a user installs Cairn: certificates and the Secrets `manifests/` reads,
//! the storage-node label, the real `kubectl apply -k`, then a bounded wait until all is Ready.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_storaged::tls::Identity;
use cairn_storaged::tls::certs::{self, Issue};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::storage::v1::CSINode;
use serde_json::{Value, json};

use crate::client::Client;
use crate::components::{CairnLayout, DRIVER};
use crate::controllers::workload::is_ready;
use crate::error::{Error, Result};
use crate::kubelet::images::ImageMap;

/// The namespace `manifests/` installs into.
pub const NAMESPACE: &str = "cairn-system";
/// The label that makes a node a storage node (03-storaged.yaml's nodeSelector).
pub const STORAGE_LABEL: &str = "cairn.dev/storage";
/// storaged's `--bootstrap-expect` in 03-storaged.yaml: the first cluster forms from
/// exactly this many labelled nodes; later ones are labelled once it has formed.
pub const BOOTSTRAP_EXPECT: usize = 3;
/// How long the install may take to become Ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How often the wait reports what it still waits for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The base a user applies: `manifests/` of this source tree (`CAIRN_MANIFESTS` overrides).
pub fn manifests_dir() -> PathBuf {
    std::env::var_os("CAIRN_MANIFESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests"))
}

/// The identity of each Secret's certificates: `(secret, identity, per node)`.
/// Per-node Secrets hold `ca.crt` and `<node>.crt`/`<node>.key` for every node; the
/// controller's is a plain TLS Secret with its CA.
const SECRETS: [(&str, &str, bool); 3] = [
    ("cairn-storaged-tls", "storage-node", true),
    ("cairn-csi-node-tls", "csi-node", true),
    ("cairn-controller-tls", "controller", false),
];

/// Creates the CA once, and a certificate for every identity the install uses (kept when
/// a previous `up` on this data dir made it): `storage-node:<node>` naming the node's
/// address, `csi-node:<node>`, `controller` and `admin` (cairnctl).
pub fn issue_certs(layout: &CairnLayout, addresses: &[IpAddr]) -> Result<()> {
    let ca = layout.certs_dir().join("ca");
    if !ca.join("ca.key").exists() {
        certs::init_ca(&ca).map_err(|e| Error::Internal(format!("certs init: {e}")))?;
    }
    let mut wanted: Vec<(String, Vec<IpAddr>)> = Vec::new();
    for (node, addr) in layout.nodes.iter().zip(addresses) {
        let local: IpAddr = [127, 0, 0, 1].into();
        wanted.push((format!("storage-node:{node}"), vec![local, *addr]));
        wanted.push((format!("csi-node:{node}"), Vec::new()));
    }
    wanted.push(("controller".into(), Vec::new()));
    wanted.push(("admin".into(), Vec::new()));
    for (id, ips) in wanted {
        let out = layout.tls_dir(&id);
        if out.join("tls.key").exists() {
            continue;
        }
        let identity: Identity = id.parse().map_err(Error::Internal)?;
        let req = Issue {
            identity,
            ips,
            dns: Vec::new(),
        };
        certs::issue(&ca, &req, &out)
            .map_err(|e| Error::Internal(format!("certs issue {id}: {e}")))?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<ByteString> {
    std::fs::read(path)
        .map(ByteString)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

/// The Secrets the manifests mount, from the certificates `issue_certs` wrote.
pub fn secrets(layout: &CairnLayout) -> Result<Vec<Secret>> {
    let mut out = Vec::new();
    for (name, role, per_node) in SECRETS {
        let mut data = BTreeMap::new();
        data.insert(
            "ca.crt".to_string(),
            read(&layout.certs_dir().join("ca/ca.crt"))?,
        );
        if per_node {
            for node in &layout.nodes {
                let dir = layout.tls_dir(&format!("{role}:{node}"));
                data.insert(format!("{node}.crt"), read(&dir.join("tls.crt"))?);
                data.insert(format!("{node}.key"), read(&dir.join("tls.key"))?);
            }
        } else {
            let dir = layout.tls_dir(role);
            data.insert("tls.crt".into(), read(&dir.join("tls.crt"))?);
            data.insert("tls.key".into(), read(&dir.join("tls.key"))?);
        }
        let mut s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/part-of": "cairn"}},
            "type": "Opaque",
        }))
        .map_err(Error::internal)?;
        s.data = Some(data);
        out.push(s);
    }
    Ok(out)
}

/// Containers of `rendered` (the base as `kubectl kustomize` renders it) whose image has
/// no mapping: `(kind, name, container, image)`. On a machine without those images the
/// harness overlay drops them (docs/decisions/037).
pub fn unmapped_containers(rendered: &str, images: &ImageMap) -> Result<Vec<[String; 4]>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let obj: Value = serde::Deserialize::deserialize(doc).map_err(Error::internal)?;
        let kind = obj["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "DaemonSet" | "Deployment" | "StatefulSet") {
            continue;
        }
        let spec = &obj["spec"]["template"]["spec"];
        for c in ["initContainers", "containers"]
            .iter()
            .flat_map(|k| spec[*k].as_array().cloned().unwrap_or_default())
        {
            let image = c["image"].as_str().unwrap_or_default();
            if images.source(image).is_none() {
                out.push([
                    kind.to_string(),
                    obj["metadata"]["name"].as_str().unwrap_or_default().into(),
                    c["name"].as_str().unwrap_or_default().into(),
                    image.into(),
                ]);
            }
        }
    }
    Ok(out)
}

/// The harness overlay: the base (by relative path), the Secrets, and a strategic-merge
/// delete of each container in `drop`.
pub fn overlay(base_rel: &str, drop: &[[String; 4]]) -> String {
    let mut text = format!(
        "# Written by cairn-harness up --with-cairn: the base unmodified, the Secrets it reads,\n# and the sidecars whose images this machine lacks removed (docs/decisions/037).\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {base_rel}\n  - secrets.json\n"
    );
    if !drop.is_empty() {
        text.push_str("patches:\n");
    }
    for [kind, name, container, image] in drop {
        let api = "apps/v1";
        text.push_str(&format!(
            "  # {container}: image {image} is not mapped (--image)\n  - patch: |-\n      apiVersion: {api}\n      kind: {kind}\n      metadata:\n        name: {name}\n        namespace: {NAMESPACE}\n      spec:\n        template:\n          spec:\n            containers:\n              - name: {container}\n                $patch: delete\n"
        ));
    }
    text
}

/// `path` relative to `from` (both absolute), as kustomize wants a base.
fn relative(path: &Path, from: &Path) -> String {
    let p: Vec<_> = path.components().collect();
    let f: Vec<_> = from.components().collect();
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// Runs the real `kubectl` against the harness; its stderr is the error.
fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| Error::Internal(format!("kubectl: {e} (install kubectl)")))?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Labels `nodes` as storage nodes.
fn label(client: &Client, nodes: &[String]) -> Result<()> {
    for n in nodes {
        client.patch::<Node>(
            None,
            n,
            &json!({"metadata": {"labels": {STORAGE_LABEL: "true"}}}),
        )?;
    }
    Ok(())
}

/// Whether every container of `p` runs, started at or after `since` (a status left from
/// an earlier `up` on the same data dir does not count).
fn running_since(p: &Pod, since: chrono::DateTime<chrono::Utc>) -> bool {
    let statuses = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    !statuses.is_empty()
        && statuses.iter().all(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .is_some_and(|t| t.0 >= since)
        })
}

/// What the install still waits for (empty once everything is Ready): pods of the
/// namespace not Ready (or Ready in a status from before `since`), storage nodes
/// storaged's catalogue does not list, nodes whose CSINode lacks the driver.
async fn pending(
    client: &Client,
    layout: &CairnLayout,
    storage: &[String],
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    let pods = client.list::<Pod>(Some(NAMESPACE));
    if pods.is_empty() {
        out.push("no pods yet".into());
    }
    for p in &pods {
        if !is_ready(p) || !running_since(p, since) {
            let st = p.status.as_ref();
            let waiting = st
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .collect::<Vec<_>>()
                .join(",");
            out.push(format!(
                "pod {} on {} ({}{})",
                p.metadata.name.as_deref().unwrap_or_default(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or("no node"),
                st.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"),
                if waiting.is_empty() {
                    String::new()
                } else {
                    format!(", {waiting}")
                }
            ));
        }
    }
    let registered = crate::components::storaged_nodes(layout).await;
    for n in storage {
        if !registered.contains(n) {
            out.push(format!("storaged of {n} in the catalogue"));
        }
    }
    for n in &layout.nodes {
        let has = client
            .get::<CSINode>(None, n)
            .ok()
            .flatten()
            .is_some_and(|c| c.spec.drivers.iter().any(|d| d.name == DRIVER));
        if !has {
            out.push(format!("CSINode {n} with {DRIVER}"));
        }
    }
    out
}

/// Waits (bounded) until nothing is pending, logging what is every `PROGRESS_EVERY`.
async fn wait_ready(
    client: &Client,
    layout: &CairnLayout,
    storage: &[String],
    started: Instant,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut report = Instant::now();
    loop {
        let left = pending(client, layout, storage, since).await;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "the Cairn install is not Ready after {READY_TIMEOUT:?}; waiting for: {}",
                left.join("; ")
            )));
        }
        if report.elapsed() >= PROGRESS_EVERY {
            tracing::info!(elapsed_s = started.elapsed().as_secs(), waiting_for = %left.join("; "), "install progress");
            report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The whole install: certificates, Secrets (in the harness overlay), labels, `kubectl
/// apply -k`, the bounded wait; then the nodes past `BOOTSTRAP_EXPECT` are labelled (they
/// join the cluster that formed) and waited for.
pub async fn install(
    client: &Client,
    layout: &CairnLayout,
    addresses: &[IpAddr],
    images: &ImageMap,
) -> Result<()> {
    let started = Instant::now();
    // Statuses carry whole seconds.
    let since =
        chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap_or_default();
    if layout.nodes.len() < BOOTSTRAP_EXPECT {
        return Err(Error::Internal(format!(
            "--with-cairn needs at least {BOOTSTRAP_EXPECT} nodes (--nodes): the manifests' storaged forms its cluster from {BOOTSTRAP_EXPECT} storage nodes"
        )));
    }
    issue_certs(layout, addresses)?;
    let base = std::path::absolute(manifests_dir()).map_err(Error::internal)?;
    let dir = layout.data_dir.join("install");
    std::fs::create_dir_all(&dir).map_err(Error::internal)?;
    let secrets: Vec<Value> = secrets(layout)?
        .iter()
        .map(serde_json::to_value)
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::internal)?;
    std::fs::write(
        dir.join("secrets.json"),
        serde_json::to_vec_pretty(&json!({"apiVersion": "v1", "kind": "List", "items": secrets}))
            .map_err(Error::internal)?,
    )
    .map_err(Error::internal)?;
    let rendered = kubectl(
        &layout.kubeconfig,
        &["kustomize", &base.display().to_string()],
    )?;
    let drop = unmapped_containers(&rendered, images)?;
    for [kind, name, container, image] in &drop {
        tracing::info!(workload = %format!("{kind}/{name}"), container = %container, image = %image, "sidecar left out: its image is not mapped (docs/decisions/037)");
    }
    std::fs::write(
        dir.join("kustomization.yaml"),
        overlay(&relative(&base, &dir), &drop),
    )
    .map_err(Error::internal)?;
    let (first, later) = layout.nodes.split_at(BOOTSTRAP_EXPECT);
    label(client, first)?;
    let applied = kubectl(
        &layout.kubeconfig,
        &["apply", "-k", &dir.display().to_string()],
    )?;
    tracing::info!(objects = applied.lines().count(), dir = %dir.display(), "kubectl apply -k");
    wait_ready(client, layout, first, started, since).await?;
    if !later.is_empty() {
        label(client, later)?;
        wait_ready(client, layout, &layout.nodes, started, since).await?;
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Cairn installed and Ready"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_sidecars_are_deleted_by_the_overlay() {
        let rendered = std::process::Command::new("kubectl")
            .args(["kustomize", &manifests_dir().display().to_string()])
            .output();
        let Some(out) = rendered.ok().filter(|o| o.status.success()) else {
            eprintln!("skipped: kubectl is not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let drop = unmapped_containers(&text, &ImageMap::with_defaults()).expect("parse");
        let names: Vec<&str> = drop.iter().map(|d| d[2].as_str()).collect();
        assert!(names.contains(&"node-driver-registrar"), "{names:?}");
        assert!(names.contains(&"csi-snapshotter"), "{names:?}");
        assert!(
            !names.iter().any(|n| *n == "storaged" || *n == "cairn-csi"),
            "{names:?}"
        );
        let o = overlay("../manifests", &drop);
        assert!(o.contains("- name: node-driver-registrar\n                $patch: delete"));
        assert_eq!(
            relative(Path::new("/a/b/manifests"), Path::new("/a/c/d")),
            "../../b/manifests"
        );
    }
}
