//! Connects the frontends to the node: opens a volume as a `BlockDevice` (through the
//! volume I/O router) or, for a local volume, as its local-pool file.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::frontend::local_pool::{LocalPool, PoolKey};
use crate::frontend::{Opened, VolumeOpener};
use crate::meta::catalog::VolumeKind;
use crate::node::StorageNode;
use crate::volume::io::VolumeIo;
use crate::{Error, Result};

pub struct NodeOpener {
    pub node: Arc<StorageNode>,
    pub pool: Arc<LocalPool>,
}

impl VolumeOpener for NodeOpener {
    fn catch_up(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.node.fresh_catalog().await.map(|_| ()) })
    }

    fn open(&self, volume: &str, generation: u64) -> BoxFuture<'_, Result<Opened>> {
        let volume = volume.to_string();
        Box::pin(async move {
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
                VolumeKind::Replicated => Ok(Opened::Replicated(
                    VolumeIo::new(self.node.clone()).device(&volume, generation),
                )),
            }
        })
    }
}
