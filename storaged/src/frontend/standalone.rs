//! The body of `storaged frontend`: one volume's FUSE mount served by a process of its own,
//! its block requests sent to the node's storaged over NBD on a Unix socket (`nbd_client.rs`),
//! so storaged's restarts only stall its I/O.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Security, VolumeClient};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::BlockDevice;
use super::fuse::FuseExport;
use super::nbd_client::NbdDevice;
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
    /// storaged's frontend data socket (`RUN_DIR/nbd.sock`).
    #[arg(long)]
    pub data_socket: PathBuf,
    /// Other storaged addresses (`HOST:PORT,...`), tried while this node's is away.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// The node's own `ca.crt`, `tls.crt`, `tls.key` (for `--endpoints`).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    #[arg(long)]
    pub insecure: bool,
    /// How long one request may stall (storaged down, no leader) before it fails with EIO.
    #[arg(long, default_value_t = 120_000)]
    pub io_deadline_ms: u64,
}

/// Runs the frontend until a stop request, SIGTERM/SIGINT, or the end of its FUSE session.
pub fn run(args: FrontendArgs) -> std::result::Result<(), String> {
    super::validate_volume(&args.volume).map_err(|e| e.to_string())?;
    if args.io_deadline_ms == 0 {
        return Err("--io-deadline-ms: must be greater than 0".into());
    }
    let io_deadline = Duration::from_millis(args.io_deadline_ms);
    let fallback = if args.endpoints.is_empty() {
        None
    } else {
        let security = Security::from_flags(args.tls_dir.as_deref(), args.insecure)
            .map_err(|s| s.message().to_string())?;
        let client = VolumeClient::new(args.endpoints.clone(), security)
            .map_err(|s| format!("--endpoints: {}", s.message()))?
            .with_deadline(io_deadline);
        Some(client)
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(serve(args, fallback))
        .map_err(|e| e.to_string())
}

async fn serve(args: FrontendArgs, fallback: Option<VolumeClient>) -> Result<()> {
    let dev = Arc::new(NbdDevice::new(
        args.data_socket.clone(),
        &args.volume,
        args.size,
        args.generation,
        args.readonly,
        Duration::from_millis(args.io_deadline_ms),
        fallback,
    ));
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
    dev: &'a NbdDevice,
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
                Control::SetSize { size } => ctx.dev.set_size(size),
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
        generation: ctx.dev.generation(),
        size: ctx.dev.size(),
        readonly: ctx.args.readonly,
    }
}
