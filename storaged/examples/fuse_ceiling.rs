//! The frontend's own ceiling for `scripts/bench-csi.sh`: storaged's FUSE export over a volume
//! held in memory, with no Raft, no disk and no network, so only the FUSE + loop path remains.
//!
//!   fuse_ceiling MOUNTPOINT SIZE_BYTES
//!
//! Mounts the export at MOUNTPOINT, prints `ready <disk file>` on stdout, serves until stdin
//! closes (its parent ended or let go), then unmounts. Needs root (FUSE `allow_other`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use cairn_storaged::frontend::BlockDevice;
use cairn_storaged::frontend::fuse::FuseExport;
use cairn_storaged::{Error, Result};
use futures::future::BoxFuture;

/// A dense volume in memory; pages are only allocated as they are written.
struct MemVolume {
    bytes: RwLock<Vec<u8>>,
}

impl MemVolume {
    fn range(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(Error::OutOfRange(format!(
                "I/O {offset}+{len} past the end ({size} bytes)"
            ))),
        }
    }
}

impl BlockDevice for MemVolume {
    fn size(&self) -> u64 {
        self.bytes.read().expect("volume lock").len() as u64
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let r = self.range(offset, u64::from(len))?;
            Ok(self.bytes.read().expect("volume lock")[r].to_vec())
        })
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let r = self.range(offset, data.len() as u64)?;
            self.bytes.write().expect("volume lock")[r].copy_from_slice(&data);
            Ok(())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let r = self.range(offset, len)?;
            self.bytes.write().expect("volume lock")[r].fill(0);
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mountpoint), Some(size)) = (args.get(1), args.get(2).and_then(|s| s.parse().ok()))
    else {
        eprintln!("usage: fuse_ceiling MOUNTPOINT SIZE_BYTES");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dev = Arc::new(MemVolume {
        bytes: RwLock::new(vec![0; size]),
    });
    let export = FuseExport::mount(
        "ceiling",
        dev,
        &PathBuf::from(mountpoint),
        false,
        rt.handle().clone(),
    )
    .unwrap_or_else(|e| {
        eprintln!("fuse_ceiling: {e}");
        std::process::exit(1);
    });
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", export.disk_path().display()).expect("stdout");
    out.flush().expect("stdout");
    // Serve until the parent closes our stdin.
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    if let Err(e) = export.unmount() {
        eprintln!("fuse_ceiling: unmount: {e}");
        std::process::exit(1);
    }
}
