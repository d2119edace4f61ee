//! The frontend host (`storaged frontend-host`, decision 064): a small long-lived process that
//! starts `storaged frontend` processes when storaged asks on its Unix socket, and reaps them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::launch::LaunchRequest;
use super::process::{
    Control, FrontendProcess, json_line_exchange, log_path, pid_alive, remove_stale_socket,
};
use crate::{Error, Result};

/// The hidden subcommand of the `storaged` binary that runs the frontend host.
pub const SUBCOMMAND: &str = "frontend-host";
/// Bound on reading one request, and on a client's whole exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line taken.
const MAX_REQUEST: u64 = 64 * 1024;

/// `storaged frontend-host`: run beside storaged (its own DaemonSet), not by hand.
#[derive(clap::Parser, Debug)]
#[command(
    name = "storaged frontend-host",
    about = "Starts storaged's FUSE frontends outside storaged's container, and reaps them"
)]
pub struct FrontendHostArgs {
    /// The Unix socket to listen on (mode 0600); storaged's `--frontend-host`.
    #[arg(long)]
    pub socket: PathBuf,
    /// storaged's run dir (the same path): the frontends' mounts, sockets and logs.
    #[arg(long, required_unless_present = "check")]
    pub run_dir: Option<PathBuf>,
    /// The node's `ca.crt`, `tls.crt`, `tls.key`, given to the frontends it starts.
    #[arg(long, env = "CAIRN_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Asks a running host whether it answers (exit 0) instead of serving: a probe.
    #[arg(long)]
    pub check: bool,
}

/// One request on the host's socket (a JSON line).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostRequest {
    /// Start the frontend these fields describe, unless that volume's already runs.
    Launch(LaunchRequest),
    /// Whether the host serves, and how many frontends it started still run.
    Health,
}

/// The host's answer (a JSON line).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostReply {
    Launched {
        pid: u32,
        already_running: bool,
    },
    Healthy {
        frontends: usize,
    },
    /// `code`: the gRPC code of the host's `Error` (`Error::code`).
    Error {
        code: i32,
        message: String,
    },
}

/// Runs the host until SIGTERM/SIGINT, or only asks a running one (`--check`).
pub fn run(args: FrontendHostArgs) -> std::result::Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if args.check {
        let n = rt
            .block_on(health(&args.socket))
            .map_err(|e| e.to_string())?;
        println!("frontend host serving, {n} frontends");
        return Ok(());
    }
    if let Some(dir) = &args.tls_dir
        && !dir.join("tls.crt").exists()
    {
        return Err(format!("--tls-dir {}: no tls.crt there", dir.display()));
    }
    let run_dir = args.run_dir.clone().unwrap_or_default();
    rt.block_on(serve(args, run_dir)).map_err(|e| e.to_string())
}

/// The frontends this host started and that still run, by volume.
type Children = Arc<Mutex<HashMap<String, u32>>>;

/// What a launch needs of the host's flags.
struct HostConfig {
    run_dir: PathBuf,
    tls_dir: Option<PathBuf>,
}

async fn serve(args: FrontendHostArgs, run_dir: PathBuf) -> Result<()> {
    std::fs::create_dir_all(run_dir.join("fuse"))?;
    remove_stale_socket(&args.socket)?;
    let listener = UnixListener::bind(&args.socket)
        .map_err(|e| Error::Internal(format!("binding {}: {e}", args.socket.display())))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %args.socket.display(), run_dir = %run_dir.display(), tls = args.tls_dir.is_some(), "frontend host serving");
    let cfg = Arc::new(HostConfig {
        run_dir,
        tls_dir: args.tls_dir.clone(),
    });
    let children: Children = Arc::default();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (cfg, children) = (cfg.clone(), children.clone());
                    tokio::spawn(async move { answer(stream, &cfg, &children).await });
                }
                Err(e) => tracing::warn!(error = %e, "frontend host accept failed"),
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // The frontends stay: they are in sessions of their own, and serve mounted volumes.
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!(
        frontends = children_running(&children),
        "frontend host stopped"
    );
    Ok(())
}

fn children_running(children: &Children) -> usize {
    let map = children.lock().unwrap_or_else(|p| p.into_inner());
    map.values().filter(|p| pid_alive(**p)).count()
}

async fn answer(stream: UnixStream, cfg: &HostConfig, children: &Children) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match serde_json::from_str::<HostRequest>(&line) {
        Ok(HostRequest::Health) => HostReply::Healthy {
            frontends: children_running(children),
        },
        Ok(HostRequest::Launch(req)) => match launch_here(&req, cfg, children).await {
            Ok((pid, already_running)) => HostReply::Launched {
                pid,
                already_running,
            },
            Err(e) => {
                tracing::warn!(volume = %req.volume, error = %e, "frontend launch refused");
                error_reply(&e)
            }
        },
        Err(e) => error_reply(&Error::invalid("request", e.to_string())),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

fn error_reply(e: &Error) -> HostReply {
    HostReply::Error {
        code: e.code() as i32,
        message: e.to_string(),
    }
}

/// Starts the frontend `req` describes, or finds that volume's running one: started by this
/// host and still alive, or answering on its control socket (started before a restart of
/// the host). Returns its pid and whether it already ran.
async fn launch_here(
    req: &LaunchRequest,
    cfg: &HostConfig,
    children: &Children,
) -> Result<(u32, bool)> {
    req.validate(&cfg.run_dir)?;
    let probe = FrontendProcess {
        pid: 0,
        control: req.control.clone(),
    };
    if let Ok(s) = probe.request(&Control::Status).await
        && s.volume == req.volume
        && pid_alive(s.pid)
    {
        tracing::info!(volume = %req.volume, pid = s.pid, "frontend already serving");
        return Ok((s.pid, true));
    }
    let mut map = children.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pid) = map.get(&req.volume).copied().filter(|p| pid_alive(*p)) {
        tracing::info!(volume = %req.volume, pid, "frontend already starting");
        return Ok((pid, true));
    }
    remove_stale_socket(&req.control)?;
    let log_file = log_path(&cfg.run_dir, &req.volume);
    let mut child = req.start(
        Path::new("/proc/self/exe"),
        cfg.tls_dir.as_deref(),
        &log_file,
    )?;
    let pid = child.id();
    map.insert(req.volume.clone(), pid);
    drop(map);
    let (volume, children) = (req.volume.clone(), children.clone());
    std::thread::spawn(move || {
        let status = child.wait();
        tracing::info!(volume, pid, status = ?status, "frontend exited");
        let mut map = children.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&volume) == Some(&pid) {
            map.remove(&volume);
        }
    });
    tracing::info!(volume = %req.volume, pid, generation = req.generation, "frontend started");
    Ok((pid, false))
}

/// One exchange with the host at `socket`, bounded; UNAVAILABLE naming the socket when it
/// does not answer.
async fn exchange(socket: &Path, req: &HostRequest) -> Result<HostReply> {
    let unavailable = |e: String| {
        Error::Unavailable(format!(
            "the frontend host at {} does not answer ({e}); is the cairn-frontend-host pod \
             running on this node? storaged never starts a frontend itself when given \
             --frontend-host",
            socket.display()
        ))
    };
    let talk = json_line_exchange::<_, HostReply>(socket, req);
    match tokio::time::timeout(REQUEST_TIMEOUT, talk).await {
        Err(_) => Err(unavailable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Ok(Ok(HostReply::Error { code, message })) => Err(Error::Peer {
            code: tonic::Code::from(code),
            message: format!("frontend host: {message}"),
        }),
        Ok(Ok(reply)) => Ok(reply),
    }
}

/// Asks the host at `socket` to start the frontend `req` describes; its pid.
pub async fn launch(socket: &Path, req: &LaunchRequest) -> Result<u32> {
    match exchange(socket, &HostRequest::Launch(req.clone())).await? {
        HostReply::Launched {
            pid,
            already_running,
        } => {
            tracing::info!(volume = %req.volume, pid, already_running, host = %socket.display(), "frontend started by the frontend host");
            Ok(pid)
        }
        other => Err(Error::Internal(format!(
            "frontend host: unexpected answer {other:?}"
        ))),
    }
}

/// How many frontends the host at `socket` started still run.
pub async fn health(socket: &Path) -> Result<usize> {
    match exchange(socket, &HostRequest::Health).await? {
        HostReply::Healthy { frontends } => Ok(frontends),
        other => Err(Error::Internal(format!(
            "frontend host: unexpected answer {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let health = serde_json::to_string(&HostRequest::Health).unwrap();
        assert_eq!(health, r#""health""#);
        let reply = HostReply::Launched {
            pid: 7,
            already_running: false,
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(json, r#"{"launched":{"pid":7,"already_running":false}}"#);
        assert!(serde_json::from_str::<HostRequest>(r#"{"exec":["/bin/sh"]}"#).is_err());
    }

    #[tokio::test]
    async fn a_host_that_does_not_answer_is_unavailable_naming_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("frontend-host.sock");
        let err = health(&socket).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.to_string().contains(&*socket.to_string_lossy()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_bad_request_gets_a_precise_error_and_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = HostConfig {
            run_dir: dir.path().join("run"),
            tls_dir: None,
        };
        let children = Children::default();
        let run = dir.path().join("elsewhere");
        let req = LaunchRequest {
            volume: "v".into(),
            mountpoint: run.join("fuse/v"),
            control: super::super::process::control_path(&run, "v").unwrap(),
            data_socket: run.join("nbd.sock"),
            size: 4096,
            generation: 0,
            readonly: false,
            endpoints: vec![],
            io_deadline_ms: 1000,
            tls: false,
        };
        let err = launch_here(&req, &cfg, &children).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains("mountpoint"), "{err}");
        assert!(children.lock().unwrap().is_empty());
    }
}
