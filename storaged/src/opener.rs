//! Connects the frontends to the node: opens a volume as a `BlockDevice` (through the
//! volume I/O router) or, for a local volume, as its local-pool file; says how to start
//! a FUSE frontend process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::frontend::local_pool::{LocalPool, PoolKey};
use crate::frontend::process::FrontendSpec;
use crate::frontend::{Opened, VolumeOpener};
use crate::meta::catalog::VolumeKind;
use crate::node::StorageNode;
use crate::volume::io::VolumeIo;
use crate::{Error, Result};

/// How long a frontend process lets one request stall (no leader, storaged restarting)
/// before it fails the request with EIO; a restart takes seconds.
const FRONTEND_IO_DEADLINE: Duration = Duration::from_secs(120);

/// This process's binary (`storaged`), which runs frontends as `storaged frontend`; after
/// the file was replaced (an upgrade in place) the new one at the same path.
fn own_binary() -> Result<PathBuf> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Error::Internal(format!("finding this process's binary: {e}")))?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

pub struct NodeOpener {
    pub node: Arc<StorageNode>,
    pub pool: Arc<LocalPool>,
    /// Where frontend processes send block requests (`frontend/nbd_local.rs`).
    pub data_socket: std::path::PathBuf,
}

impl VolumeOpener for NodeOpener {
    fn catch_up(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.node.fresh_catalog().await.map(|_| ()) })
    }

    fn frontend_spec(&self, volume: &str) -> BoxFuture<'_, Result<Option<FrontendSpec>>> {
        let volume = volume.to_string();
        Box::pin(async move {
            let cfg = self.node.cfg();
            if cfg.in_process_frontends {
                return Ok(None);
            }
            // Used only while this node's storaged is away: the volume's other members,
            // then every peer this node was told about.
            let mut endpoints = Vec::new();
            self.node.with_catalog(|cat| {
                if let Some(vol) = cat.volumes.get(&volume) {
                    for id in vol.members.iter().filter(|id| **id != cfg.id) {
                        if let Some(n) = cat.nodes.get(id) {
                            endpoints.push(n.addr.clone());
                        }
                    }
                }
            });
            endpoints.extend(cfg.peers());
            let mut seen = std::collections::HashSet::new();
            endpoints.retain(|e| *e != cfg.addr && seen.insert(e.clone()));
            let tls_dir = match &cfg.security {
                cairn_client::Security::Tls(tls) => Some(tls.dir().to_path_buf()),
                cairn_client::Security::Insecure => None,
            };
            Ok(Some(FrontendSpec {
                exe: own_binary()?,
                data_socket: self.data_socket.clone(),
                tls_dir,
                endpoints,
                io_deadline: FRONTEND_IO_DEADLINE,
                host: cfg.frontend_host.clone(),
            }))
        })
    }

    fn open(&self, volume: &str, generation: u64) -> BoxFuture<'_, Result<Opened>> {
        Box::pin(self.open_with(volume.to_string(), generation, None))
    }

    fn open_for_frontend(&self, volume: &str, generation: u64) -> BoxFuture<'_, Result<Opened>> {
        Box::pin(self.open_with(volume.to_string(), generation, Some(FRONTEND_IO_DEADLINE)))
    }
}

impl NodeOpener {
    /// A volume for a frontend; `deadline`: how long its requests wait for a leader (`None`:
    /// the router's default).
    async fn open_with(
        &self,
        volume: String,
        generation: u64,
        deadline: Option<Duration>,
    ) -> Result<Opened> {
        {
            // Fresh, not the local copy: the volume may have been created a moment ago.
            let cat = self.node.fresh_catalog().await?;
            let vol = cat
                .volumes
                .get(&volume)
                .cloned()
                .ok_or_else(|| Error::not_found("volume", &volume))?;
            match vol.kind {
                VolumeKind::Local => {
                    if !vol.members.contains(&self.node.cfg().id) {
                        return Err(Error::FailedPrecondition(format!(
                            "local volume `{volume}` lives on node {:?}, not on this node ({})",
                            vol.members,
                            self.node.cfg().name
                        )));
                    }
                    let key = PoolKey {
                        id: vol.id,
                        name: &volume,
                    };
                    self.pool.adopt_legacy(key).await?;
                    let path = match self.pool.size(key).await? {
                        Some(s) if s >= vol.size => self.pool.path_for(key)?,
                        Some(_) => {
                            self.pool.grow(key, vol.size).await?;
                            self.pool.path_for(key)?
                        }
                        None => self.pool.create(key, vol.size).await?,
                    };
                    Ok(Opened::Local {
                        path,
                        size: vol.size,
                    })
                }
                VolumeKind::Replicated => {
                    let io = VolumeIo::new(self.node.clone());
                    let io = match deadline {
                        Some(d) => io.with_deadline(d),
                        None => io,
                    };
                    Ok(Opened::Replicated(io.device(&volume, generation)))
                }
            }
        }
    }
}
