//! The kubelet's plugin registration (`pluginregistration.v1`): sockets that appear in
//! `<root>/plugins_registry` are asked GetInfo, checked, and told NotifyRegistrationStatus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::csi::v1 as csi;

use super::csi::connect;

/// The generated `pluginregistration` API (proto/kubelet/pluginregistration/v1/api.proto).
pub mod api {
    #![allow(clippy::all)]
    tonic::include_proto!("pluginregistration");
}

use api::registration_client::RegistrationClient;

/// The CSI versions this kubelet speaks, as upstream's CSI plugin handler checks them.
const CSI_VERSIONS: [&str; 1] = ["1."];

/// The kubelet's bound on NodeGetInfo at registration: `csiTimeout` (2 minutes) in upstream's
/// pkg/volume/csi/csi_plugin.go, sent as the call's deadline (`grpc-timeout`), as Go's
/// context deadline is.
pub const CSI_TIMEOUT: Duration = Duration::from_secs(120);

/// A plugin registered through its registration socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub name: String,
    /// The CSI endpoint on this kubelet's side (`/var/lib/kubelet/…` rebased on the root).
    pub endpoint: PathBuf,
    /// NodeGetInfo's answer at registration: what upstream installs in CSINode, once.
    pub node_info: csi::NodeGetInfoResponse,
}

/// Registration sockets seen so far, by path: the socket file they were seen as, and the
/// plugin it registered (None: refused, or still registering). A socket replaced at the same
/// path (a restarted registrar unlinks its old one and binds anew) is a new one, as the
/// kubelet's inotify watcher sees it: registered again. Each registration runs on its own
/// task, as upstream's operation executor runs it on its own goroutine: a NodeGetInfo that
/// takes its time holds up nothing else.
#[derive(Default)]
pub struct Registry {
    seen: Arc<Mutex<Seen>>,
    /// A registration finished since the last scan (the registered set may have changed).
    settled: Arc<AtomicBool>,
}

/// Registration sockets by path: the socket file, and what it registered.
type Seen = BTreeMap<PathBuf, (SocketFile, Option<Registered>)>;

/// Which file a socket path is: inode and change time (an inode number alone may be reused
/// at once by the next socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketFile {
    ino: u64,
    ctime: (i64, i64),
}

/// The socket at `p`, if `p` is one.
fn socket_file(p: &Path) -> Option<SocketFile> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(p).ok()?;
    m.file_type().is_socket().then(|| SocketFile {
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The node's `/var/lib/kubelet` is this kubelet's root: a path a plugin reports under it
/// is rebased there, as the node's own view of that directory.
pub fn rebase(root: &Path, endpoint: &str) -> PathBuf {
    let p = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    match Path::new(p).strip_prefix("/var/lib/kubelet") {
        Ok(rest) => root.join(rest),
        Err(_) => PathBuf::from(p),
    }
}

/// Checks what GetInfo returned: a CSI plugin with a supported version whose endpoint
/// answers NodeGetInfo. The error is what NotifyRegistrationStatus carries.
async fn validate(root: &Path, info: &api::PluginInfo) -> Result<Registered, String> {
    if info.r#type != "CSIPlugin" {
        return Err(format!(
            "plugin type {:?} is not supported by this kubelet (only CSIPlugin)",
            info.r#type
        ));
    }
    if info.name.is_empty() {
        return Err("plugin name is empty".into());
    }
    if !info.supported_versions.iter().any(|v| {
        CSI_VERSIONS
            .iter()
            .any(|p| v.trim_start_matches('v').starts_with(p))
    }) {
        return Err(format!(
            "none of the versions specified {:?} are supported by this kubelet (1.x)",
            info.supported_versions
        ));
    }
    let endpoint = rebase(root, &info.endpoint);
    let ch = connect(&endpoint).await?;
    let mut req = tonic::Request::new(csi::NodeGetInfoRequest {});
    req.set_timeout(CSI_TIMEOUT);
    let mut client = csi::node_client::NodeClient::new(ch);
    let call = client.node_get_info(req);
    let node_info = tokio::time::timeout(CSI_TIMEOUT, call)
        .await
        .map_err(|_| {
            format!(
                "NodeGetInfo on {}: context deadline exceeded",
                endpoint.display()
            )
        })?
        .map_err(|e| format!("NodeGetInfo on {}: {}", endpoint.display(), e.message()))?
        .into_inner();
    Ok(Registered {
        name: info.name.clone(),
        endpoint,
        node_info,
    })
}

/// GetInfo, validation and NotifyRegistrationStatus with one registration socket.
async fn register(root: &Path, socket: &Path) -> Result<Registered, String> {
    let ch = connect(socket).await?;
    let mut client = RegistrationClient::new(ch);
    let info = client
        .get_info(api::InfoRequest {})
        .await
        .map_err(|e| format!("GetInfo: {}", e.message()))?
        .into_inner();
    let verdict = validate(root, &info).await;
    let status = api::RegistrationStatus {
        plugin_registered: verdict.is_ok(),
        error: verdict.as_ref().err().cloned().unwrap_or_default(),
    };
    client
        .notify_registration_status(status)
        .await
        .map_err(|e| format!("NotifyRegistrationStatus: {}", e.message()))?;
    verdict
}

impl Registry {
    /// One pass over `<root>/plugins_registry`: starts registering new sockets and forgets
    /// the plugins whose socket went away. Returns whether the registered set changed
    /// (a socket went, or a registration finished since the last pass).
    pub async fn scan(&self, root: &Path, node: &str) -> bool {
        let dir = root.join("plugins_registry");
        let present: BTreeMap<PathBuf, SocketFile> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.path(), socket_file(&e.path())?)))
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.len();
        seen.retain(|p, (file, _)| present.get(p) == Some(file));
        let removed = seen.len() != before;
        if removed {
            tracing::info!(node, "plugin registration socket removed or replaced");
        }
        for (socket, file) in present {
            if seen.contains_key(&socket) {
                continue;
            }
            seen.insert(socket.clone(), (file, None));
            let (seen, settled) = (self.seen.clone(), self.settled.clone());
            let (root, node) = (root.to_path_buf(), node.to_string());
            tokio::spawn(async move {
                let outcome = register(&root, &socket).await;
                match &outcome {
                    Ok(r) => {
                        tracing::info!(node, plugin = %r.name, endpoint = %r.endpoint.display(), "plugin registered")
                    }
                    Err(e) => {
                        tracing::warn!(node, socket = %socket.display(), error = %e, "plugin registration failed")
                    }
                }
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                // Only for the socket file it registered: a replaced one registers anew.
                if let Some((f, slot)) = seen.get_mut(&socket)
                    && *f == file
                {
                    *slot = outcome.ok();
                }
                settled.store(true, Ordering::SeqCst);
            });
        }
        drop(seen);
        self.settled.swap(false, Ordering::SeqCst) || removed
    }

    /// The plugins registered so far.
    pub fn registered(&self) -> Vec<Registered> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|(_, r)| r.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_under_the_kubelet_dir_are_rebased_on_the_root() {
        let root = Path::new("/data/nodes/node-1/kubelet");
        assert_eq!(
            rebase(root, "/var/lib/kubelet/plugins/csi.cairn.dev/csi.sock"),
            root.join("plugins/csi.cairn.dev/csi.sock")
        );
        assert_eq!(
            rebase(root, "unix:///run/x.sock"),
            PathBuf::from("/run/x.sock")
        );
    }

    #[tokio::test]
    async fn a_plugin_of_another_type_or_version_is_refused() {
        let root = Path::new("/nonexistent");
        let info = |ty: &str, v: &str| api::PluginInfo {
            r#type: ty.into(),
            name: "d".into(),
            endpoint: "/nonexistent/csi.sock".into(),
            supported_versions: vec![v.into()],
        };
        let e = validate(root, &info("DevicePlugin", "1.0.0"))
            .await
            .unwrap_err();
        assert!(e.contains("DevicePlugin"), "{e}");
        let e = validate(root, &info("CSIPlugin", "0.3.0"))
            .await
            .unwrap_err();
        assert!(e.contains("0.3.0"), "{e}");
        let e = validate(root, &info("CSIPlugin", "1.0.0"))
            .await
            .unwrap_err();
        assert!(e.contains("CSI plugin") || e.contains("connect"), "{e}");
    }
}
