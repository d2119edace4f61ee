//! FUSE frontends in processes of their own (`storaged frontend`, decision 041): starting one
//! in its own session, its control socket (status, generation, size, stop), and adoption.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::launch::LaunchRequest;
use crate::{Error, Result};

/// The hidden subcommand of the `storaged` binary that runs one frontend.
pub const SUBCOMMAND: &str = "frontend";
/// How long a new frontend may take to mount and answer on its control socket.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a stopped frontend may take to unmount and exit before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on one control request.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What storaged needs to start frontends: its own binary, its frontend data socket
/// (`nbd_local.rs`), how to reach the cluster while this node's storaged is away, and the
/// I/O deadline after which a stalled request fails (EIO).
#[derive(Clone, Debug)]
pub struct FrontendSpec {
    pub exe: PathBuf,
    pub data_socket: PathBuf,
    /// The node's `--tls-dir` (its own certificate); `None`: plaintext (`--insecure`).
    pub tls_dir: Option<PathBuf>,
    /// The volume's other members, then every peer this node was told about.
    pub endpoints: Vec<String>,
    pub io_deadline: Duration,
    /// The frontend host's socket (`storaged --frontend-host`): frontends are started by that
    /// process, outside storaged's container; `None`: storaged starts them itself.
    pub host: Option<PathBuf>,
}

/// One request on a frontend's control socket (a JSON line).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    Status,
    /// Writes carry this publish generation from now on.
    SetGeneration {
        generation: u64,
    },
    /// The volume was resized: the `disk` file has this size from now on.
    SetSize {
        size: u64,
    },
    /// Unmount and exit.
    Stop,
}

/// A frontend's answer to every request (a JSON line): who it is and what it serves.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FrontendStatus {
    pub volume: String,
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub generation: u64,
    pub size: u64,
    pub readonly: bool,
}

/// The control socket of `volume`'s frontend under `run_dir` (named by a hash, so any volume
/// name fits a socket address).
pub fn control_path(run_dir: &Path, volume: &str) -> Result<PathBuf> {
    let path = run_dir.join(format!("fe-{}.sock", short_hash(volume)));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::invalid(
            "data-dir",
            format!(
                "the control socket {} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket \
                 address holds: use a shorter --data-dir",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// The log file of `volume`'s frontend under `run_dir`.
pub fn log_path(run_dir: &Path, volume: &str) -> PathBuf {
    run_dir.join(format!("fe-{}.log", short_hash(volume)))
}

fn short_hash(volume: &str) -> String {
    sha2::Sha256::digest(volume.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Removes the control socket a dead frontend left, so a new one's answer is its own.
pub fn remove_stale_socket(control: &Path) -> Result<()> {
    match std::fs::remove_file(control) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Internal(format!(
            "removing a stale control socket {}: {e}",
            control.display()
        ))),
        _ => Ok(()),
    }
}

/// A running frontend process, reached through its control socket.
#[derive(Debug, Clone)]
pub struct FrontendProcess {
    pub pid: u32,
    pub control: PathBuf,
}

/// What a new frontend serves.
pub struct Launch<'a> {
    pub volume: &'a str,
    pub mountpoint: &'a Path,
    pub readonly: bool,
    pub generation: u64,
    pub size: u64,
}

impl FrontendProcess {
    /// Starts a frontend in a session of its own (so storaged's exit, a signal to its process
    /// group or a restart leaves it running), stdio to its log file, or has the frontend host
    /// start it (`spec.host`), and waits until it has mounted and answers on its control socket.
    pub async fn spawn(spec: &FrontendSpec, run_dir: &Path, launch: Launch<'_>) -> Result<Self> {
        let volume = launch.volume;
        let control = control_path(run_dir, volume)?;
        let log_file = log_path(run_dir, volume);
        let pid = match &spec.host {
            Some(socket) => {
                let req = LaunchRequest::new(spec, &control, &launch);
                super::host::launch(socket, &req).await?
            }
            None => {
                remove_stale_socket(&control)?;
                let req = LaunchRequest::new(spec, &control, &launch);
                let mut child = req.start(&spec.exe, spec.tls_dir.as_deref(), &log_file)?;
                let pid = child.id();
                // Reaped here while this process lives; after a restart, by whoever inherits it.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                pid
            }
        };
        let process = FrontendProcess { pid, control };
        let started = Instant::now();
        loop {
            match process.request(&Control::Status).await {
                Ok(s) if s.volume == volume && s.pid == pid => break,
                Ok(s) => {
                    return Err(Error::Internal(format!(
                        "the control socket {} answers for volume `{}` (pid {}), not `{volume}` \
                         (pid {pid})",
                        process.control.display(),
                        s.volume,
                        s.pid
                    )));
                }
                Err(_) if pid_alive(pid) && started.elapsed() < START_DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    process.kill();
                    return Err(Error::Internal(format!(
                        "the frontend of `{volume}` did not start within {START_DEADLINE:?} \
                         ({e}); its log {}:\n{}",
                        log_file.display(),
                        tail(&log_file, 2000)
                    )));
                }
            }
        }
        tracing::info!(volume, pid, control = %process.control.display(), "frontend process started");
        Ok(process)
    }

    /// The frontend of `volume` recorded as `pid` with control socket `control`, if it still
    /// runs and answers as that frontend (not a reused pid, not another volume's).
    pub async fn adopt(volume: &str, pid: u32, control: PathBuf) -> Option<(Self, FrontendStatus)> {
        if !pid_alive(pid) {
            return None;
        }
        let process = FrontendProcess { pid, control };
        match process.request(&Control::Status).await {
            Ok(s) if s.volume == volume && s.pid == pid => Some((process, s)),
            Ok(s) => {
                tracing::warn!(volume, pid, other = %s.volume, other_pid = s.pid, "control socket answers for another frontend");
                None
            }
            Err(e) => {
                tracing::warn!(volume, pid, error = %e, "recorded frontend does not answer");
                // Still ours (its command line names its socket): a hung frontend is ended,
                // so the one started in its place does not share its mountpoint with it.
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let control = process.control.as_os_str().as_encoded_bytes();
                if cmdline.split(|b| *b == 0).any(|arg| arg == control) {
                    tracing::warn!(volume, pid, "killing the unresponsive frontend");
                    process.kill();
                }
                None
            }
        }
    }

    /// Sends one request and reads the answer.
    pub async fn request(&self, req: &Control) -> Result<FrontendStatus> {
        let exchange = json_line_exchange::<_, Reply>(&self.control, req);
        let reply = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "frontend control socket {}: no answer within {CONTROL_TIMEOUT:?}",
                    self.control.display()
                ))
            })?
            .map_err(|e| {
                Error::Unavailable(format!(
                    "frontend control socket {}: {e}",
                    self.control.display()
                ))
            })?;
        match reply {
            Reply::Status(s) => Ok(s),
            Reply::Error(e) => Err(Error::Internal(format!("frontend: {e}"))),
        }
    }

    /// Asks the frontend to unmount and exit, and waits for it; killed after the deadline.
    pub async fn stop(&self) {
        if let Err(e) = self.request(&Control::Stop).await {
            tracing::warn!(pid = self.pid, error = %e, "frontend did not take the stop request");
        }
        let started = Instant::now();
        while pid_alive(self.pid) {
            if started.elapsed() >= STOP_DEADLINE {
                tracing::warn!(
                    pid = self.pid,
                    "frontend still running after a stop: killing it"
                );
                self.kill();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.control);
    }

    fn kill(&self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Sends `req` as one JSON line on the Unix socket `path` and reads one JSON line back (the
/// frontends' control sockets, the frontend host's socket); unbounded: the caller bounds it.
pub async fn json_line_exchange<Q: Serialize, A: serde::de::DeserializeOwned>(
    path: &Path,
    req: &Q,
) -> std::io::Result<A> {
    let stream = UnixStream::connect(path).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str::<A>(&answer).map_err(std::io::Error::other)
}

/// A frontend's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Status(FrontendStatus),
    Error(String),
}

/// The last `max` bytes of a log file, for an error message.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut out = String::new();
    let _ = f.read_to_string(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_and_replies_are_json_lines() {
        let req = Control::SetGeneration { generation: 7 };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"op":"set_generation","generation":7}"#);
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), req);
        let bad = serde_json::from_str::<Control>(r#"{"op":"format"}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn control_paths_are_short_and_distinct() {
        let a = control_path(Path::new("/run/x"), "pvc-1").unwrap();
        let b = control_path(Path::new("/run/x"), "pvc-2").unwrap();
        assert_ne!(a, b);
        assert!(a.to_string_lossy().ends_with(".sock"));
        let long = control_path(Path::new(&format!("/{}", "d".repeat(100))), "v");
        assert!(long.unwrap_err().to_string().contains("--data-dir"));
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
