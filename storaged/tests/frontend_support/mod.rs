//! Shared fixtures for the frontend tests: an in-memory block device, a fake volume opener,
//! shell helpers, and a guard that removes mounts and loop devices even when a test fails.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_storaged::frontend::{BlockDevice, Opened, VolumeOpener};
use cairn_storaged::{Error, Result};
use futures::future::BoxFuture;

const BLOCK: u64 = 4096;

/// A thin in-memory device: 4 KiB blocks in a map, unwritten blocks read as zeros. It rejects
/// unaligned I/O, as a real replicated volume may.
pub struct MemDevice {
    blocks: Mutex<BTreeMap<u64, Box<[u8; BLOCK as usize]>>>,
    size: AtomicU64,
    pub flushes: AtomicU64,
}

impl MemDevice {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(MemDevice {
            blocks: Mutex::new(BTreeMap::new()),
            size: AtomicU64::new(size),
            flushes: AtomicU64::new(0),
        })
    }

    pub fn grow(&self, size: u64) {
        self.size.store(size, Ordering::SeqCst);
    }

    /// The bytes at `[offset, offset+len)`, straight from the map.
    pub fn bytes(&self, offset: u64, len: u64) -> Vec<u8> {
        let blocks = self.blocks.lock().unwrap();
        let mut out = vec![0; len as usize];
        let mut pos = offset;
        while pos < offset + len {
            let (idx, within) = (pos / BLOCK, (pos % BLOCK) as usize);
            let n = ((BLOCK as usize - within) as u64).min(offset + len - pos) as usize;
            if let Some(block) = blocks.get(&idx) {
                let dst = (pos - offset) as usize;
                out[dst..dst + n].copy_from_slice(&block[within..within + n]);
            }
            pos += n as u64;
        }
        out
    }

    pub fn allocated_blocks(&self) -> usize {
        self.blocks.lock().unwrap().len()
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(512) || !len.is_multiple_of(512) {
            return Err(Error::invalid(
                "offset",
                format!("unaligned I/O {offset}+{len}"),
            ));
        }
        if offset + len > self.size.load(Ordering::SeqCst) {
            return Err(Error::OutOfRange(format!(
                "I/O {offset}+{len} past the end"
            )));
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            self.check(offset, u64::from(len))?;
            let blocks = self.blocks.lock().unwrap();
            let mut out = vec![0; len as usize];
            let mut pos = offset;
            while pos < offset + u64::from(len) {
                let (idx, within) = (pos / BLOCK, (pos % BLOCK) as usize);
                let n =
                    ((BLOCK as usize - within) as u64).min(offset + u64::from(len) - pos) as usize;
                if let Some(block) = blocks.get(&idx) {
                    let dst = (pos - offset) as usize;
                    out[dst..dst + n].copy_from_slice(&block[within..within + n]);
                }
                pos += n as u64;
            }
            Ok(out)
        })
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check(offset, data.len() as u64)?;
            let mut blocks = self.blocks.lock().unwrap();
            let mut pos = offset;
            let end = offset + data.len() as u64;
            while pos < end {
                let (idx, within) = (pos / BLOCK, (pos % BLOCK) as usize);
                let n = ((BLOCK as usize - within) as u64).min(end - pos) as usize;
                let src = (pos - offset) as usize;
                let block = blocks
                    .entry(idx)
                    .or_insert_with(|| Box::new([0; BLOCK as usize]));
                block[within..within + n].copy_from_slice(&data[src..src + n]);
                pos += n as u64;
            }
            Ok(())
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check(offset, len)?;
            let mut blocks = self.blocks.lock().unwrap();
            let mut pos = offset;
            while pos < offset + len {
                let (idx, within) = (pos / BLOCK, (pos % BLOCK) as usize);
                let n = ((BLOCK as usize - within) as u64).min(offset + len - pos) as usize;
                if n == BLOCK as usize {
                    blocks.remove(&idx);
                } else if let Some(block) = blocks.get_mut(&idx) {
                    block[within..within + n].fill(0);
                }
                pos += n as u64;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// Volumes by name: replicated ones backed by [`MemDevice`]s, local ones by pool files.
#[derive(Default)]
pub struct FakeOpener {
    replicated: Mutex<HashMap<String, Arc<MemDevice>>>,
    local: Mutex<HashMap<String, (PathBuf, u64)>>,
}

impl FakeOpener {
    pub fn add_replicated(&self, name: &str, dev: Arc<MemDevice>) {
        self.replicated.lock().unwrap().insert(name.into(), dev);
    }

    pub fn add_local(&self, name: &str, path: PathBuf, size: u64) {
        self.local.lock().unwrap().insert(name.into(), (path, size));
    }
}

impl VolumeOpener for FakeOpener {
    fn open(&self, volume: &str, _generation: u64) -> BoxFuture<'_, Result<Opened>> {
        let volume = volume.to_string();
        Box::pin(async move {
            if let Some(dev) = self.replicated.lock().unwrap().get(&volume) {
                return Ok(Opened::Replicated(dev.clone()));
            }
            if let Some((path, size)) = self.local.lock().unwrap().get(&volume) {
                return Ok(Opened::Local {
                    path: path.clone(),
                    size: *size,
                });
            }
            Err(Error::not_found("volume", volume))
        })
    }
}

/// Runs `sh -c script` and returns its stdout; panics with stderr on failure.
pub async fn sh(script: &str) -> String {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` until it holds or `timeout` passes.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// On drop (also while unwinding), unmounts every mount under `dir` and detaches every loop
/// device whose backing file is under it: filesystems first, then loops, then FUSE mounts.
pub struct Cleanup {
    dir: PathBuf,
}

impl Cleanup {
    pub fn new(dir: &Path) -> Self {
        Cleanup {
            dir: dir.canonicalize().unwrap(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mounts = |fuse: bool| -> Vec<String> {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut v: Vec<String> = info
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    let fstype = f.iter().skip_while(|x| **x != "-").nth(1)?;
                    (f.get(4)?.starts_with(self.dir.to_str()?)
                        && fstype.starts_with("fuse") == fuse)
                        .then(|| f[4].to_string())
                })
                .collect();
            v.sort_by_key(|m| std::cmp::Reverse(m.len()));
            v
        };
        let run = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        for m in mounts(false) {
            if !run(&["umount", &m]) {
                run(&["umount", "-l", &m]);
            }
        }
        let list = std::process::Command::new("losetup")
            .args(["-l", "-n", "-O", "NAME,BACK-FILE"])
            .output();
        if let Ok(out) = list {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut parts = line.split_whitespace();
                // `/disk`: a FUSE export's file whose mount was lazily detached (a test
                // process that unwound instead of aborting); nothing can reach it any more.
                if let (Some(dev), Some(back)) = (parts.next(), parts.next())
                    && (back.starts_with(self.dir.to_str().unwrap_or("/nonexistent"))
                        || back == "/disk")
                {
                    run(&["losetup", "-d", dev]);
                }
            }
        }
        for m in mounts(true) {
            run(&["umount", "-l", &m]);
        }
    }
}

/// Whether a loop device exists (is attached) right now.
pub fn loop_attached(dev: &str) -> bool {
    let name = Path::new(dev)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    Path::new("/sys/block")
        .join(name)
        .join("loop/backing_file")
        .exists()
}
