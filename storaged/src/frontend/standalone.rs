//! The body of `storaged frontend`: one volume's FUSE mount served by a process of its own
//! over gRPC to the volume's leader (cairn-client), so storaged's restarts only stall its I/O.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{Security, VolumeClient};
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::BlockDevice;
use super::fuse::FuseExport;
use super::process::{Control, FrontendStatus, Reply};
use crate::{Error, Result};

/// `storaged frontend`: started by storaged's attach manager, not by hand.
#[derive(clap::Parser, Debug)]
#[command(
    name = "storaged frontend",
    about = "Serves one volume's FUSE file (started by storaged)"
)]
pub struct FrontendArgs {
    /// The volume to serve.
    #[arg(long)]
    pub volume: String,
    /// Where to mount the FUSE filesystem holding the file `disk`.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// The control socket to listen on (status, generation, size, stop).
    #[arg(long)]
    pub control: PathBuf,
    /// The volume's size in bytes.
    #[arg(long)]
    pub size: u64,
    /// The publish generation every write carries (0: unfenced).
    #[arg(long, default_value_t = 0)]
    pub generation: u64,
    #[arg(long)]
    pub readonly: bool,
    /// storaged addresses, this node's first (`HOST:PORT,...`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// How long one request may stall (storaged down, no leader) before it fails with EIO.
    #[arg(long, default_value_t = 120_000)]
    pub io_deadline_ms: u64,
    /// The node's own `ca.crt`, `tls.crt`, `tls.key`.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    #[arg(long)]
    pub insecure: bool,
}

/// A volume reached through the cluster's `BlockService`, as the FUSE filesystem sees it.
struct ClientDevice {
    client: VolumeClient,
    volume: String,
    size: AtomicU64,
    generation: AtomicU64,
}

impl BlockDevice for ClientDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn read(&self, offset: u64, len: u32) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move { Ok(self.client.read(&self.volume, offset, len).await?) })
    }

    fn write(&self, offset: u64, data: Bytes) -> BoxFuture<'_, Result<()>> {
        let generation = self.generation.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(self
                .client
                .write_as(&self.volume, offset, data, generation)
                .await?)
        })
    }

    fn discard(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        let generation = self.generation.load(Ordering::Relaxed);
        Box::pin(async move {
            Ok(self
                .client
                .discard_as(&self.volume, offset, len, generation)
                .await?)
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        let generation = self.generation.load(Ordering::Relaxed);
        Box::pin(async move { Ok(self.client.flush_as(&self.volume, generation).await?) })
    }

    fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }
}

/// Runs the frontend until a stop request, SIGTERM/SIGINT, or the end of its FUSE session.
pub fn run(args: FrontendArgs) -> std::result::Result<(), String> {
    super::validate_volume(&args.volume).map_err(|e| e.to_string())?;
    if args.io_deadline_ms == 0 {
        return Err("--io-deadline-ms: must be greater than 0".into());
    }
    let security = Security::from_flags(args.tls_dir.as_deref(), args.insecure)
        .map_err(|s| s.message().to_string())?;
    let client = VolumeClient::new(args.endpoints.clone(), security)
        .map_err(|s| format!("--endpoints: {}", s.message()))?
        .with_deadline(Duration::from_millis(args.io_deadline_ms));
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(serve(args, client)).map_err(|e| e.to_string())
}

async fn serve(args: FrontendArgs, client: VolumeClient) -> Result<()> {
    let dev = Arc::new(ClientDevice {
        client,
        volume: args.volume.clone(),
        size: AtomicU64::new(args.size),
        generation: AtomicU64::new(args.generation),
    });
    let handle = tokio::runtime::Handle::current();
    let (d, m, v, ro) = (
        dev.clone() as Arc<dyn BlockDevice>,
        args.mountpoint.clone(),
        args.volume.clone(),
        args.readonly,
    );
    let export = tokio::task::spawn_blocking(move || FuseExport::mount(&v, d, &m, ro, handle))
        .await
        .map_err(|e| Error::Internal(format!("FUSE mount task: {e}")))??;
    // The socket appears once the mount is up: storaged takes an answer as "mounted".
    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control).map_err(|e| {
        Error::Internal(format!(
            "binding the control socket {}: {e}",
            args.control.display()
        ))
    })?;
    tracing::info!(volume = %args.volume, pid = std::process::id(), mountpoint = %args.mountpoint.display(), "frontend serving");
    let mut stopping = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = Ctx { args: &args, dev: &dev };
                    stopping = answer(stream, &ctx).await;
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: unmounting");
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => if export.is_finished() {
                tracing::warn!(mountpoint = %args.mountpoint.display(), "FUSE session ended from outside");
                break;
            },
        }
        if stopping {
            break;
        }
    }
    let mountpoint = args.mountpoint.clone();
    let unmounted = tokio::task::spawn_blocking(move || export.unmount())
        .await
        .map_err(|e| Error::Internal(format!("FUSE unmount task: {e}")))?;
    let _ = std::fs::remove_file(&args.control);
    tracing::info!(volume = %args.volume, mountpoint = %mountpoint.display(), "frontend stopped");
    unmounted
}

struct Ctx<'a> {
    args: &'a FrontendArgs,
    dev: &'a ClientDevice,
}

/// Answers one control connection (one request); true when it asked to stop.
async fn answer(stream: tokio::net::UnixStream, ctx: &Ctx<'_>) -> bool {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        BufReader::new(read).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return false;
    }
    let (reply, stop) = match serde_json::from_str::<Control>(&line) {
        Ok(req) => {
            let stop = req == Control::Stop;
            match req {
                Control::SetGeneration { generation } => ctx.dev.set_generation(generation),
                Control::SetSize { size } => ctx.dev.size.store(size, Ordering::Relaxed),
                Control::Status | Control::Stop => {}
            }
            if !matches!(req, Control::Status) {
                tracing::info!(request = ?req, "control request");
            }
            (Reply::Status(status(ctx)), stop)
        }
        Err(e) => (Reply::Error(format!("bad control request: {e}")), false),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    stop
}

fn status(ctx: &Ctx<'_>) -> FrontendStatus {
    FrontendStatus {
        volume: ctx.args.volume.clone(),
        pid: std::process::id(),
        mountpoint: ctx.args.mountpoint.clone(),
        generation: ctx.dev.generation.load(Ordering::Relaxed),
        size: ctx.dev.size(),
        readonly: ctx.args.readonly,
    }
}
