//! Volume-to-volume copy for snapshots and content sources: the source group's leader
//! pages its written chunks from one point-in-time view and writes them into the target.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cairn::v1 as pb;
use futures::StreamExt;

use crate::chunks::{CHUNK, MAX_IO};
use crate::engine::keys;
use crate::node::StorageNode;
use crate::volume::io::{Limits, VolumeIo};
use crate::{Error, Result};

/// Bytes the engine reader hands over per page.
const PAGE_BYTES: usize = 4 << 20;
/// Writes into the target kept in flight.
const IN_FLIGHT: usize = 8;
/// Progress is logged every this many bytes.
const PROGRESS_EVERY: u64 = 64 << 20;
/// Bound on one copy; HTTP/2 keep-alives notice a dead peer long before.
const COPY_LIMITS: Limits = Limits {
    deadline: Duration::from_secs(6 * 3600),
    attempt: Duration::from_secs(6 * 3600),
};

/// Copies `name` into `target` on `name`'s leader (here, or forwarded to it). Re-running
/// it is harmless. Returns the bytes copied.
pub async fn copy_on_leader(io: &VolumeIo, name: &str, target: &str) -> Result<u64> {
    let req = pb::CopyToRequest {
        volume: name.to_string(),
        target: target.to_string(),
    };
    io.route(
        name,
        COPY_LIMITS,
        || copy_to(io.node(), name, target),
        |mut c| {
            let req = req.clone();
            async move { Ok(c.copy_to(req).await?.into_inner().bytes_copied) }
        },
    )
    .await
}

/// Copies every written chunk of `name` (this node must lead its group) into `target`.
/// The view is taken after a linearizable barrier, so it holds every write acknowledged
/// before the call and, since entries apply atomically, a prefix of the volume's log:
/// a crash-consistent image. Unwritten ranges are skipped (the target reads them as
/// zeros if it was never written). Returns the bytes copied.
pub async fn copy_to(node: &Arc<StorageNode>, name: &str, target: &str) -> Result<u64> {
    let (vol, mut pages) = node.io().chunk_pages(name, PAGE_BYTES).await?;
    let cat = node.fresh_catalog().await?;
    let t = cat
        .volumes
        .get(target)
        .ok_or_else(|| Error::not_found("volume", target))?;
    if t.size < vol.size {
        return Err(Error::OutOfRange(format!(
            "target `{target}` ({} bytes) is smaller than `{name}` ({} bytes)",
            t.size, vol.size
        )));
    }
    let io = VolumeIo::new(node.clone());
    tracing::info!(volume = %name, group = vol.id, target = %target, "copy started");
    let (mut copied, mut logged) = (0u64, 0u64);
    while let Some(page) = pages.recv().await {
        let runs = runs(page?);
        let mut writes = futures::stream::iter(runs)
            .map(|(offset, data)| {
                let io = &io;
                async move {
                    let len = data.len() as u64;
                    io.write(target, offset, data.into(), 0).await.map(|_| len)
                }
            })
            .buffer_unordered(IN_FLIGHT);
        while let Some(r) = writes.next().await {
            copied += r?;
        }
        if copied - logged >= PROGRESS_EVERY {
            logged = copied;
            tracing::info!(volume = %name, target = %target, copied_bytes = copied, size = vol.size, "copy progress");
        }
    }
    tracing::info!(volume = %name, target = %target, copied_bytes = copied, "copy done");
    Ok(copied)
}

/// Joins chunks (engine key, 4 KiB) into runs of adjacent chunks of at most `MAX_IO`
/// bytes, as `(offset, bytes)`.
fn runs(page: Vec<crate::engine::Kv>) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for (k, v) in page {
        let offset = keys::suffix_of(&k) * CHUNK;
        match out.last_mut() {
            Some((start, data))
                if *start + data.len() as u64 == offset
                    && (data.len() + v.len()) as u64 <= MAX_IO =>
            {
                data.extend_from_slice(&v)
            }
            _ => out.push((offset, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_chunks_join_up_to_the_request_limit() {
        let chunk = |idx: u64| {
            (
                keys::group_key(7, idx).to_vec(),
                vec![idx as u8; CHUNK as usize],
            )
        };
        let mut page: Vec<_> = (0..300).map(chunk).collect();
        page.push(chunk(1000));
        let r = runs(page);
        // 300 adjacent chunks: 256 (1 MiB) then 44; then a lone chunk further on.
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].0, r[0].1.len() as u64), (0, MAX_IO));
        assert_eq!((r[1].0, r[1].1.len() as u64), (256 * CHUNK, 44 * CHUNK));
        assert_eq!(r[1].1[0], 0u8.wrapping_add(256u16 as u8));
        assert_eq!((r[2].0, r[2].1.len() as u64), (1000 * CHUNK, CHUNK));
        assert_eq!(r[2].1[0], 1000u16 as u8);
    }
}
