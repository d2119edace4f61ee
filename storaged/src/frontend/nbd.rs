//! The NBD frontend: a fixed-newstyle NBD server with concurrent requests per connection and
//! simple replies, exporting one [`BlockDevice`] on a loopback TCP port, or (`nbd_local.rs`)
//! any attached volume to this node's frontend processes over a Unix socket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::BlockDevice;
use crate::{Error, Result};

// Handshake (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md).
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;
pub(crate) const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
pub(crate) const FLAG_C_NO_ZEROES: u32 = 2;
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub(crate) const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub(crate) const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_NAME: u16 = 1;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;
// Transmission flags.
pub(crate) const TF_HAS_FLAGS: u16 = 1;
pub(crate) const TF_READ_ONLY: u16 = 2;
pub(crate) const TF_SEND_FLUSH: u16 = 4;
pub(crate) const TF_SEND_FUA: u16 = 8;
pub(crate) const TF_SEND_TRIM: u16 = 32;
pub(crate) const TF_SEND_WRITE_ZEROES: u16 = 64;
// Transmission.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
pub(crate) const CMD_FLAG_FUA: u16 = 1;
pub(crate) const CMD_FLAG_NO_HOLE: u16 = 2;
pub(crate) const EPERM: u32 = 1;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;
/// The protocol's "shutting down": here, no leader or quorum for now (an election, a
/// restart); a client may retry. Every other failure is EIO.
pub(crate) const ESHUTDOWN: u32 = 108;

/// Largest option payload and I/O request accepted.
const MAX_OPTION: u32 = 64 << 10;
const MAX_IO: u32 = 32 << 20;
/// Requests in flight per connection.
const MAX_INFLIGHT: usize = 64;

pub(crate) struct Export {
    pub name: String,
    pub dev: Arc<dyn BlockDevice>,
    pub readonly: bool,
}

/// Where a connection's export comes from, by the name the client asks for.
pub(crate) trait ExportSource: Send + Sync + 'static {
    fn find<'a>(&'a self, name: &'a [u8]) -> BoxFuture<'a, Option<Arc<Export>>>;
    /// What `NBD_OPT_LIST` answers.
    fn names(&self) -> Vec<String>;
}

/// A server of one export, also the default (empty name) one.
impl ExportSource for Export {
    fn find<'a>(&'a self, name: &'a [u8]) -> BoxFuture<'a, Option<Arc<Export>>> {
        Box::pin(async move {
            self.matches(name).then(|| {
                Arc::new(Export {
                    name: self.name.clone(),
                    dev: self.dev.clone(),
                    readonly: self.readonly,
                })
            })
        })
    }

    fn names(&self) -> Vec<String> {
        vec![self.name.clone()]
    }
}

/// A running NBD server for one volume. Dropping it (or [`NbdServer::stop`]) closes the
/// listener and every connection.
pub struct NbdServer {
    addr: SocketAddr,
    name: String,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("addr", &self.addr)
            .field("name", &self.name)
            .finish()
    }
}

impl NbdServer {
    /// Serves `dev` as export `name` on 127.0.0.1 with a kernel-chosen port.
    pub async fn start(name: &str, dev: Arc<dyn BlockDevice>, readonly: bool) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::Internal(format!("binding an NBD listener for `{name}`: {e}")))?;
        let addr = listener.local_addr()?;
        let export = Arc::new(Export {
            name: name.to_string(),
            dev,
            readonly,
        });
        let task = tokio::spawn(accept_loop(listener, export));
        tracing::info!(volume = name, %addr, readonly, "NBD export listening");
        Ok(NbdServer {
            addr,
            name: name.to_string(),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nbd://127.0.0.1:PORT/<name>`, as qemu and nbd-client spell it.
    pub fn uri(&self) -> String {
        format!("nbd://{}/{}", self.addr, self.name)
    }

    /// Stops accepting, closes every connection and waits for the tasks to end.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, export: Arc<Export>) {
    let source: Arc<dyn ExportSource> = export.clone();
    // Connection tasks live in the set: aborting this task aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (export, source) = (export.clone(), source.clone());
                    conns.spawn(async move {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(volume = %export.name, %peer, error = %e, "NBD connection: TCP_NODELAY");
                        }
                        if let Err(e) = serve(stream, source).await {
                            tracing::debug!(volume = %export.name, %peer, error = %e, "NBD connection ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(volume = %export.name, error = %e, "NBD accept failed"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one connection: the handshake, then the export the client chose.
pub(crate) async fn serve<S>(stream: S, source: Arc<dyn ExportSource>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    if let Some(export) = handshake(&mut rd, &mut wr, &*source).await? {
        transmission(rd, wr, export).await?;
    }
    Ok(())
}

/// Option haggling; the export once the client entered transmission.
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    source: &dyn ExportSource,
) -> std::io::Result<Option<Arc<Export>>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_u64(NBDMAGIC).await?;
    wr.write_u64(IHAVEOPT).await?;
    wr.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    wr.flush().await?;
    let cflags = rd.read_u32().await?;
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol(format!("unknown client flags {cflags:#x}")));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;
    loop {
        if rd.read_u64().await? != IHAVEOPT {
            return Err(protocol("bad option magic".into()));
        }
        let opt = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION {
            return Err(protocol(format!("option {opt} of {len} bytes")));
        }
        let mut data = vec![0; len as usize];
        rd.read_exact(&mut data).await?;
        match opt {
            OPT_EXPORT_NAME => {
                let Some(export) = source.find(&data).await else {
                    return Ok(None); // the protocol's only answer here is to hang up
                };
                wr.write_u64(export.dev.size()).await?;
                wr.write_u16(export.transmission_flags()).await?;
                if !no_zeroes {
                    wr.write_all(&[0; 124]).await?;
                }
                wr.flush().await?;
                return Ok(Some(export));
            }
            OPT_ABORT => {
                option_reply(wr, opt, REP_ACK, &[]).await?;
                wr.flush().await?;
                return Ok(None);
            }
            OPT_LIST if len != 0 => {
                option_reply(wr, opt, REP_ERR_INVALID, b"LIST takes no data").await?
            }
            OPT_LIST => {
                for name in source.names() {
                    let mut item = (name.len() as u32).to_be_bytes().to_vec();
                    item.extend_from_slice(name.as_bytes());
                    option_reply(wr, opt, REP_SERVER, &item).await?;
                }
                option_reply(wr, opt, REP_ACK, &[]).await?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, requests)) = parse_info(&data) else {
                    option_reply(wr, opt, REP_ERR_INVALID, b"malformed INFO/GO").await?;
                    wr.flush().await?;
                    continue;
                };
                let Some(export) = source.find(name).await else {
                    option_reply(wr, opt, REP_ERR_UNKNOWN, b"no such export").await?;
                    wr.flush().await?;
                    continue;
                };
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.dev.size().to_be_bytes());
                info.extend_from_slice(&export.transmission_flags().to_be_bytes());
                option_reply(wr, opt, REP_INFO, &info).await?;
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut bs = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [super::SECTOR as u32, 4096, MAX_IO] {
                        bs.extend_from_slice(&v.to_be_bytes());
                    }
                    option_reply(wr, opt, REP_INFO, &bs).await?;
                }
                if requests.contains(&INFO_NAME) {
                    let mut n = INFO_NAME.to_be_bytes().to_vec();
                    n.extend_from_slice(export.name.as_bytes());
                    option_reply(wr, opt, REP_INFO, &n).await?;
                }
                option_reply(wr, opt, REP_ACK, &[]).await?;
                if opt == OPT_GO {
                    wr.flush().await?;
                    return Ok(Some(export));
                }
            }
            _ => option_reply(wr, opt, REP_ERR_UNSUP, &[]).await?,
        }
        wr.flush().await?;
    }
}

impl Export {
    /// The empty name selects the default export, which is this one.
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    fn transmission_flags(&self) -> u16 {
        let mut f =
            TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
        if self.readonly {
            f |= TF_READ_ONLY;
        }
        f
    }
}

/// INFO/GO payload: u32 name length, name, u16 count, count × u16 information requests.
fn parse_info(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let nlen = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let name = data.get(4..4 + nlen)?;
    let rest = data.get(4 + nlen..)?;
    let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let reqs = rest.get(2..)?;
    if reqs.len() != n * 2 {
        return None;
    }
    Some((
        name,
        reqs.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    ))
}

async fn option_reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    opt: u32,
    kind: u32,
    data: &[u8],
) -> std::io::Result<()> {
    wr.write_u64(REPLY_MAGIC).await?;
    wr.write_u32(opt).await?;
    wr.write_u32(kind).await?;
    wr.write_u32(data.len() as u32).await?;
    wr.write_all(data).await
}

fn protocol(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
}

/// Reads requests and runs up to [`MAX_INFLIGHT`] at once; a writer task serialises replies.
async fn transmission<R, W>(mut rd: R, wr: W, export: Arc<Export>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Reply>(MAX_INFLIGHT);
    let mut tasks = JoinSet::new();
    let writer = tokio::spawn(write_replies(wr, rx));
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT));
    let result = loop {
        let mut hdr = [0u8; 28];
        match rd.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let magic = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let flags = u16::from_be_bytes([hdr[4], hdr[5]]);
        let cmd = u16::from_be_bytes([hdr[6], hdr[7]]);
        let cookie = u64::from_be_bytes(hdr[8..16].try_into().unwrap_or_default());
        let offset = u64::from_be_bytes(hdr[16..24].try_into().unwrap_or_default());
        let length = u32::from_be_bytes([hdr[24], hdr[25], hdr[26], hdr[27]]);
        if magic != REQUEST_MAGIC {
            break Err(protocol(format!("bad request magic {magic:#x}")));
        }
        if cmd == CMD_DISC {
            break Ok(());
        }
        let mut payload = Bytes::new();
        if cmd == CMD_WRITE {
            if length > MAX_IO {
                break Err(protocol(format!("write of {length} bytes")));
            }
            let mut buf = vec![0; length as usize];
            if let Err(e) = rd.read_exact(&mut buf).await {
                break Err(e);
            }
            payload = Bytes::from(buf);
        }
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break Ok(());
        };
        let (tx, export) = (tx.clone(), export.clone());
        tasks.spawn(async move {
            let (error, data) = match execute(&export, cmd, flags, offset, length, payload).await {
                Ok(data) => (0, data),
                Err(errno) => (errno, Vec::new()),
            };
            let _ = tx
                .send(Reply {
                    cookie,
                    error,
                    data,
                })
                .await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    };
    // Finish what is in flight (the protocol asks it on disconnect), then let the writer drain.
    while tasks.join_next().await.is_some() {}
    drop(tx);
    match writer.await {
        Ok(Err(e)) if result.is_ok() => return Err(e),
        Err(e) if result.is_ok() => return Err(std::io::Error::other(e)),
        _ => {}
    }
    result
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Reply>,
) -> std::io::Result<()> {
    while let Some(r) = rx.recv().await {
        wr.write_u32(SIMPLE_REPLY_MAGIC).await?;
        wr.write_u32(r.error).await?;
        wr.write_u64(r.cookie).await?;
        wr.write_all(&r.data).await?;
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await
}

/// One command; the error is an NBD errno.
async fn execute(
    export: &Export,
    cmd: u16,
    flags: u16,
    offset: u64,
    length: u32,
    payload: Bytes,
) -> std::result::Result<Vec<u8>, u32> {
    let dev = &*export.dev;
    let in_bounds = crate::chunks::check_bounds(offset, u64::from(length), dev.size()).is_ok();
    let writes = matches!(cmd, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && export.readonly {
        return Err(EPERM);
    }
    if matches!(cmd, CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) && !in_bounds {
        return Err(if cmd == CMD_READ { EINVAL } else { ENOSPC });
    }
    let io = |e: Error| {
        tracing::warn!(volume = %export.name, cmd, offset, length, error = %e, "NBD request failed");
        match e.code() {
            tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded => {
                ESHUTDOWN
            }
            _ => super::errno_of(&e) as u32,
        }
    };
    let len = u64::from(length);
    let data = match cmd {
        CMD_READ if length > MAX_IO => Err(EINVAL),
        CMD_READ => super::read_at(dev, offset, length).await.map_err(io),
        CMD_WRITE => super::write_at(dev, offset, payload)
            .await
            .map(|()| Vec::new())
            .map_err(io),
        CMD_FLUSH => dev.flush().await.map(|()| Vec::new()).map_err(io),
        CMD_TRIM => super::trim_range(dev, offset, len)
            .await
            .map(|()| Vec::new())
            .map_err(io),
        CMD_WRITE_ZEROES if flags & CMD_FLAG_NO_HOLE != 0 => super::write_zeroes(dev, offset, len)
            .await
            .map(|()| Vec::new())
            .map_err(io),
        CMD_WRITE_ZEROES => super::zero_range(dev, offset, len)
            .await
            .map(|()| Vec::new())
            .map_err(io),
        _ => Err(EINVAL),
    }?;
    if writes && flags & CMD_FLAG_FUA != 0 {
        dev.flush().await.map_err(io)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_payload_is_parsed() {
        let mut d = 3u32.to_be_bytes().to_vec();
        d.extend_from_slice(b"vol");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&INFO_NAME.to_be_bytes());
        let (name, reqs) = parse_info(&d).unwrap();
        assert_eq!(name, b"vol");
        assert_eq!(reqs, vec![INFO_BLOCK_SIZE, INFO_NAME]);
        assert!(parse_info(&d[..d.len() - 1]).is_none());
    }
}
