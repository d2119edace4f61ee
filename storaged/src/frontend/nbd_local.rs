//! The data path of this node's frontend processes: an NBD server on a Unix socket in the run
//! dir (root only) whose exports are volumes opened by name, `<volume>@<generation>[@ro]`.
//!
//! A FUSE frontend in a process of its own (decision 041) sends each block request here, one
//! binary NBD message each way, instead of a gRPC call over TLS: the request is then served
//! by the same in-process router (`volume/io.rs`) as a frontend inside storaged (decision 049).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::net::UnixListener;
use tokio::task::{JoinHandle, JoinSet};

use super::nbd::{Export, ExportSource, serve};
use super::{Opened, VolumeOpener};
use crate::{Error, Result};

/// The socket's file name in the run dir.
pub const SOCKET: &str = "nbd.sock";

/// The export name a frontend asks for: the volume, the publish generation its writes carry,
/// and whether it is read-only.
pub fn export_name(volume: &str, generation: u64, readonly: bool) -> String {
    let ro = if readonly { "@ro" } else { "" };
    format!("{volume}@{generation}{ro}")
}

/// The inverse of [`export_name`]; `None` for anything else.
fn parse_export(name: &[u8]) -> Option<(String, u64, bool)> {
    let name = std::str::from_utf8(name).ok()?;
    let (rest, readonly) = match name.strip_suffix("@ro") {
        Some(r) => (r, true),
        None => (name, false),
    };
    let (volume, generation) = rest.rsplit_once('@')?;
    super::validate_volume(volume).ok()?;
    Some((volume.to_string(), generation.parse().ok()?, readonly))
}

/// Opens each asked-for volume through storaged's opener.
struct Volumes {
    opener: Arc<dyn VolumeOpener>,
}

impl ExportSource for Volumes {
    fn find<'a>(&'a self, name: &'a [u8]) -> BoxFuture<'a, Option<Arc<Export>>> {
        Box::pin(async move {
            let (volume, generation, readonly) = parse_export(name)?;
            match self.opener.open_for_frontend(&volume, generation).await {
                Ok(Opened::Replicated(dev)) => Some(Arc::new(Export {
                    name: volume,
                    dev,
                    readonly,
                })),
                Ok(Opened::Local { .. }) => {
                    tracing::warn!(
                        volume,
                        "local frontend socket: a local volume has no frontend"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(volume, error = %e, "local frontend socket: volume not opened");
                    None
                }
            }
        })
    }

    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The running server; dropping it stops accepting and closes every connection.
pub struct LocalNbd {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl LocalNbd {
    /// Binds `run_dir/nbd.sock` (a stale one from an earlier run is replaced), readable and
    /// writable by root only, and serves it.
    pub fn start(run_dir: &Path, opener: Arc<dyn VolumeOpener>) -> Result<LocalNbd> {
        let path = run_dir.join(SOCKET);
        let bind_err =
            |e: std::io::Error| Error::Internal(format!("binding {}: {e}", path.display()));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bind_err(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(bind_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        let source: Arc<dyn ExportSource> = Arc::new(Volumes { opener });
        let task = tokio::spawn(accept_loop(listener, source));
        tracing::info!(path = %path.display(), "frontend data socket listening");
        Ok(LocalNbd { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalNbd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: UnixListener, source: Arc<dyn ExportSource>) {
    // Connection tasks live in the set: aborting this task aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let source = source.clone();
                    conns.spawn(async move {
                        if let Err(e) = serve(stream, source).await {
                            tracing::debug!(error = %e, "frontend data connection ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "frontend data socket accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_round_trip_and_junk_is_refused() {
        for (v, g, ro) in [("pvc-1", 7, false), ("a", 0, true)] {
            let n = export_name(v, g, ro);
            assert_eq!(parse_export(n.as_bytes()), Some((v.to_string(), g, ro)));
        }
        for bad in ["", "pvc-1", "pvc-1@", "pvc-1@x", "@3", "a b@1", "pvc@1@rw"] {
            assert_eq!(parse_export(bad.as_bytes()), None, "{bad}");
        }
    }
}
