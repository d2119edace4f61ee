//! Connects the frontends to the node: opens a volume as a `BlockDevice` (local
//! fast path when this node leads the group, else the client library) or a local-pool file.

use std::sync::Arc;

use bytes::Bytes;
use cairn_client::VolumeClient;
use futures::future::BoxFuture;

use crate::frontend::local_pool::{LocalPool, PoolKey};
use crate::frontend::{BlockDevice, Opened, VolumeOpener};
use crate::meta::catalog::VolumeKind;
use crate::node::StorageNode;
use crate::{Error, Result};

pub struct NodeOpener {
    pub node: Arc<StorageNode>,
    pub pool: Arc<LocalPool>,
}

/// A replicated volume seen through this node.
struct RaftVolume {
    node: Arc<StorageNode>,
    client: VolumeClient,
    name: String,
}

fn status_err(s: tonic::Status) -> Error {
    match s.code() {
        tonic::Code::NotFound => Error::not_found("volume", s.message()),
        tonic::Code::OutOfRange => Error::OutOfRange(s.message().into()),
        tonic::Code::InvalidArgument => Error::invalid("request", s.message()),
        _ => Error::Unavailable(s.message().into()),
    }
}

impl RaftVolume {
    /// Local fast path first; on a redirect, through the client (which follows hints).
    fn local_first(e: &Error) -> bool {
        matches!(e, Error::NotLeader { .. } | Error::Unavailable(_))
    }
}

impl BlockDevice for RaftVolume {
    fn size(&self) -> u64 {
        self.node
            .meta_shared
            .with_catalog(|cat| cat.volumes.get(&self.name).map(|v| v.size))
            .unwrap_or(0)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            match self.node.read(&self.name, offset, len as u64).await {
                Err(e) if Self::local_first(&e) => self
                    .client
                    .read(&self.name, offset, len)
                    .await
                    .map_err(status_err),
                other => other,
            }
        })
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.node.write(&self.name, offset, data.clone()).await {
                Err(e) if Self::local_first(&e) => self
                    .client
                    .write(&self.name, offset, data)
                    .await
                    .map_err(status_err),
                other => other,
            }
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.node.discard(&self.name, offset, len).await {
                Err(e) if Self::local_first(&e) => self
                    .client
                    .discard(&self.name, offset, len)
                    .await
                    .map_err(status_err),
                other => other,
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self.node.flush(&self.name).await {
                Err(e) if Self::local_first(&e) => {
                    self.client.flush(&self.name).await.map_err(status_err)
                }
                other => other,
            }
        })
    }
}

impl VolumeOpener for NodeOpener {
    fn catch_up(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.node.fresh_catalog().await.map(|_| ()) })
    }

    fn open(&self, volume: &str) -> BoxFuture<'_, Result<Opened>> {
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
                    if !vol.members.contains(&self.node.cfg.id) {
                        return Err(Error::FailedPrecondition(format!(
                            "local volume `{volume}` lives on node {:?}, not on this node ({})",
                            vol.members, self.node.cfg.name
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
                    let mut endpoints = vec![self.node.cfg.addr.clone()];
                    endpoints.extend(cat.nodes.values().map(|n| n.addr.clone()));
                    let client = VolumeClient::new(endpoints)
                        .map_err(|s| Error::Internal(s.message().into()))?;
                    Ok(Opened::Replicated(Arc::new(RaftVolume {
                        node: self.node.clone(),
                        client,
                        name: volume,
                    })))
                }
            }
        })
    }
}
