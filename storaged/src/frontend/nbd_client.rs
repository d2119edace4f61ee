//! The frontend process's side of `nbd_local.rs`: a [`BlockDevice`] whose requests go to the
//! node's storaged as NBD messages over its Unix socket, many in flight on one connection.
//!
//! While this node's storaged is away (a restart, a crash), requests go to the volume's other
//! members over gRPC (`cairn-client`, the fallback) and the socket is tried again every
//! `LOCAL_RETRY`; without a fallback they wait, bounded by `--io-deadline-ms`. A request
//! answered ESHUTDOWN (no leader or quorum for now) is sent again; any other error is its answer.
//! A write lost with its connection is sent again under a new write identity: it may apply
//! twice, which for block writes is the same bytes at the same offset.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BlockDevice;
use super::nbd::{
    CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, EINVAL, ENOSPC, EPERM, ESHUTDOWN,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, IHAVEOPT, INFO_EXPORT, NBDMAGIC,
    OPT_GO, REP_ACK, REP_INFO, REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use super::nbd_local::export_name;
use crate::{Error, Result};

/// The longest wait between two tries while storaged is away or has no leader.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// Bound on one connect and handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Payloads up to this size go out in one write with their header.
const COALESCE: usize = 64 << 10;
/// How often the local socket is tried again while requests go through the fallback.
const LOCAL_RETRY: Duration = Duration::from_millis(500);

/// One block request, as the fallback client needs it.
#[derive(Clone, Copy)]
enum Op<'a> {
    Read(u64, u32),
    Write(u64, &'a Bytes),
    Trim(u64, u32),
    Flush,
}

impl Op<'_> {
    /// The NBD command, offset, length and payload.
    fn wire(&self) -> (u16, u64, u32, &[u8]) {
        match *self {
            Op::Read(o, l) => (CMD_READ, o, l, &[]),
            Op::Write(o, d) => (CMD_WRITE, o, d.len() as u32, &d[..]),
            Op::Trim(o, l) => (CMD_TRIM, o, l, &[]),
            Op::Flush => (CMD_FLUSH, 0, 0, &[]),
        }
    }
}

/// What one request came back with: its data, an NBD errno, or the connection's end.
enum Outcome {
    Done(Vec<u8>),
    Errno(u32),
    Lost,
}

/// A request waiting for its reply: how many data bytes the reply carries, and who waits.
struct Waiter {
    read_len: usize,
    tx: oneshot::Sender<std::result::Result<Vec<u8>, u32>>,
}

/// One connection: requests are written under a lock, replies read by a task of its own.
struct Conn {
    export: String,
    size: u64,
    writer: tokio::sync::Mutex<WriteHalf<UnixStream>>,
    pending: Arc<Mutex<Option<HashMap<u64, Waiter>>>>,
    next: AtomicU64,
    closed: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    async fn open(socket: &PathBuf, export: String) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(socket).await?;
        let (rd, mut wr) = tokio::io::split(stream);
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let size = handshake(&mut rd, &mut wr, &export).await?;
        let pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_replies(rd, pending.clone(), closed.clone()));
        Ok(Conn {
            export,
            size,
            writer: tokio::sync::Mutex::new(wr),
            pending,
            next: AtomicU64::new(1),
            closed,
            reader,
        })
    }

    async fn call(&self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> Outcome {
        let cookie = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let read_len = if cmd == CMD_READ { len as usize } else { 0 };
        match self.pending.lock().expect("nbd pending poisoned").as_mut() {
            Some(p) => p.insert(cookie, Waiter { read_len, tx }),
            None => return Outcome::Lost,
        };
        let mut msg = Vec::with_capacity(28 + payload.len().min(COALESCE));
        msg.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&cmd.to_be_bytes());
        msg.extend_from_slice(&cookie.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        let sent = {
            let mut wr = self.writer.lock().await;
            if payload.len() <= COALESCE {
                msg.extend_from_slice(payload);
                wr.write_all(&msg).await
            } else {
                match wr.write_all(&msg).await {
                    Ok(()) => wr.write_all(payload).await,
                    Err(e) => Err(e),
                }
            }
        };
        if sent.is_err() {
            self.closed.store(true, Ordering::Relaxed);
            return Outcome::Lost;
        }
        match rx.await {
            Ok(Ok(data)) => Outcome::Done(data),
            Ok(Err(errno)) => Outcome::Errno(errno),
            Err(_) => Outcome::Lost,
        }
    }
}

/// Fixed newstyle, no zeroes, `NBD_OPT_GO` for `export`; the export's size.
async fn handshake<R, W>(rd: &mut R, wr: &mut W, export: &str) -> std::io::Result<u64>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if rd.read_u64().await? != NBDMAGIC || rd.read_u64().await? != IHAVEOPT {
        return Err(bad("not an NBD newstyle server".into()));
    }
    if rd.read_u16().await? & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(bad("the server is not fixed newstyle".into()));
    }
    wr.write_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
        .await?;
    let mut data = (export.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    wr.write_u64(IHAVEOPT).await?;
    wr.write_u32(OPT_GO).await?;
    wr.write_u32(data.len() as u32).await?;
    wr.write_all(&data).await?;
    wr.flush().await?;
    let mut size = None;
    loop {
        if rd.read_u64().await? != REPLY_MAGIC {
            return Err(bad("bad option reply magic".into()));
        }
        let opt = rd.read_u32().await?;
        let kind = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > 64 << 10 {
            return Err(bad(format!("option reply of {len} bytes")));
        }
        let mut body = vec![0; len as usize];
        rd.read_exact(&mut body).await?;
        if opt != OPT_GO {
            return Err(bad(format!("a reply to option {opt}, not GO")));
        }
        match kind {
            REP_INFO if body.len() >= 12 && body[..2] == INFO_EXPORT.to_be_bytes() => {
                size = Some(u64::from_be_bytes(
                    body[2..10].try_into().unwrap_or_default(),
                ));
            }
            REP_INFO => {}
            REP_ACK => {
                return size.ok_or_else(|| bad("GO acknowledged without the export's size".into()));
            }
            k if k & (1 << 31) != 0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "export `{export}` refused ({k:#x}): {}",
                        String::from_utf8_lossy(&body)
                    ),
                ));
            }
            k => return Err(bad(format!("unknown option reply {k:#x}"))),
        }
    }
}

/// Reads simple replies until the connection ends, then fails every waiter (`Lost`).
async fn read_replies(
    mut rd: BufReader<ReadHalf<UnixStream>>,
    pending: Arc<Mutex<Option<HashMap<u64, Waiter>>>>,
    closed: Arc<AtomicBool>,
) {
    let ended = loop {
        let mut hdr = [0u8; 16];
        if let Err(e) = rd.read_exact(&mut hdr).await {
            break e.to_string();
        }
        let magic = u32::from_be_bytes(hdr[..4].try_into().unwrap_or_default());
        let errno = u32::from_be_bytes(hdr[4..8].try_into().unwrap_or_default());
        let cookie = u64::from_be_bytes(hdr[8..].try_into().unwrap_or_default());
        if magic != SIMPLE_REPLY_MAGIC {
            break format!("bad reply magic {magic:#x}");
        }
        let waiter = pending
            .lock()
            .expect("nbd pending poisoned")
            .as_mut()
            .and_then(|p| p.remove(&cookie));
        let Some(w) = waiter else {
            break format!("a reply to unknown request {cookie}");
        };
        let result = if errno != 0 {
            Err(errno)
        } else {
            let mut data = vec![0; w.read_len];
            if let Err(e) = rd.read_exact(&mut data).await {
                break e.to_string();
            }
            Ok(data)
        };
        let _ = w.tx.send(result);
    };
    closed.store(true, Ordering::Relaxed);
    // Dropping the waiters' senders tells each of them the connection is gone.
    pending.lock().expect("nbd pending poisoned").take();
    tracing::info!(reason = %ended, "storaged data connection ended");
}

/// A volume served by this node's storaged, reached through its frontend data socket.
pub struct NbdDevice {
    socket: PathBuf,
    volume: String,
    readonly: bool,
    size: AtomicU64,
    generation: AtomicU64,
    io_deadline: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    fallback: Option<cairn_client::VolumeClient>,
    /// While the local socket failed: when to try it again.
    local_retry_at: Mutex<Option<Instant>>,
}

impl NbdDevice {
    pub fn new(
        socket: PathBuf,
        volume: &str,
        size: u64,
        generation: u64,
        readonly: bool,
        io_deadline: Duration,
        fallback: Option<cairn_client::VolumeClient>,
    ) -> Self {
        NbdDevice {
            socket,
            volume: volume.to_string(),
            readonly,
            size: AtomicU64::new(size),
            generation: AtomicU64::new(generation),
            io_deadline,
            conn: tokio::sync::Mutex::new(None),
            fallback,
            local_retry_at: Mutex::new(None),
        }
    }

    /// The publish generation writes carry now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The volume grew: requests are sent on a connection that knows the new size.
    pub fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// The open connection for the current generation and size, or a new one.
    async fn connection(&self) -> std::io::Result<Arc<Conn>> {
        let export = export_name(
            &self.volume,
            self.generation.load(Ordering::Relaxed),
            self.readonly,
        );
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.closed.load(Ordering::Relaxed)
            && c.export == export
            && c.size >= self.size.load(Ordering::Relaxed)
        {
            return Ok(c.clone());
        }
        *slot = None;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::open(&self.socket, export))
            .await
            .map_err(|_| std::io::Error::other("connect and handshake timed out"))??;
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Whether the local socket is due a try (always, unless it failed lately and a
    /// fallback is there to use meanwhile).
    fn local_due(&self) -> bool {
        let at = self.local_retry_at.lock().expect("retry time poisoned");
        self.fallback.is_none() || at.is_none_or(|t| Instant::now() >= t)
    }

    fn local_failed(&self, ok: bool) {
        *self.local_retry_at.lock().expect("retry time poisoned") =
            (!ok).then(|| Instant::now() + LOCAL_RETRY);
    }

    /// Through the cluster's `BlockService`, while this node's storaged is away.
    async fn through_fallback(
        &self,
        client: &cairn_client::VolumeClient,
        op: Op<'_>,
    ) -> Result<Vec<u8>> {
        let generation = self.generation();
        let v = &self.volume;
        Ok(match op {
            Op::Read(o, l) => client.read(v, o, l).await?,
            Op::Write(o, d) => client
                .write_as(v, o, d.clone(), generation)
                .await
                .map(|()| Vec::new())?,
            Op::Trim(o, l) => client
                .discard_as(v, o, u64::from(l), generation)
                .await
                .map(|()| Vec::new())?,
            Op::Flush => client.flush_as(v, generation).await.map(|()| Vec::new())?,
        })
    }

    /// Sends one request until storaged answers it: through the fallback while the local
    /// socket fails, else waiting for the socket up to the I/O deadline.
    async fn request(&self, op: Op<'_>) -> Result<Vec<u8>> {
        let (cmd, offset, len, payload) = op.wire();
        let start = Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            if self.local_due() {
                match self.connection().await {
                    Ok(conn) => match conn.call(cmd, offset, len, payload).await {
                        Outcome::Done(data) => {
                            self.local_failed(false);
                            return Ok(data);
                        }
                        Outcome::Errno(errno) => return Err(error_of(errno, &self.volume)),
                        Outcome::Lost => {}
                    },
                    Err(e) => {
                        tracing::debug!(volume = %self.volume, error = %e, "frontend socket");
                    }
                }
            }
            if let Some(client) = &self.fallback {
                self.local_failed(true);
                return self.through_fallback(client, op).await;
            }
            if start.elapsed() >= self.io_deadline {
                return Err(Error::Unavailable(format!(
                    "volume `{}`: no answer within {:?}: storaged's frontend socket does not answer",
                    self.volume, self.io_deadline
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// An NBD errno from storaged as this crate's error (the FUSE layer maps it to its errno).
fn error_of(errno: u32, volume: &str) -> Error {
    match errno {
        ENOSPC => Error::ResourceExhausted(format!("volume `{volume}`: no space")),
        ESHUTDOWN => Error::Unavailable(format!("volume `{volume}`: no leader or quorum")),
        EPERM => Error::FailedPrecondition(format!("volume `{volume}` is read-only")),
        EINVAL => Error::OutOfRange(format!("volume `{volume}`: request out of range")),
        e => Error::Io(std::io::Error::from_raw_os_error(e as i32)),
    }
}

impl BlockDevice for NbdDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(self.request(Op::Read(offset, len)))
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            u32::try_from(data.len()).map_err(|_| Error::invalid("data", "too long"))?;
            self.request(Op::Write(offset, &data)).await.map(drop)
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // NBD lengths are 32-bit: a long discard goes as several.
            let mut at = offset;
            let end = offset + len;
            while at < end {
                let n = (end - at).min(1 << 30);
                self.request(Op::Trim(at, n as u32)).await?;
                at += n;
            }
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.request(Op::Flush).await.map(drop) })
    }

    fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }
}
