//! How one `storaged frontend` process is started: its structured launch parameters (also the
//! frontend host's request, `host.rs`), their validation, and the command line built from them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::process::{FrontendSpec, Launch, SUBCOMMAND, control_path};
use crate::{Error, Result};

/// The longest I/O deadline a frontend may be given (one hour).
const MAX_IO_DEADLINE_MS: u64 = 3_600_000;
/// The most endpoints one frontend is given (a volume's members and the node's peers).
const MAX_ENDPOINTS: usize = 256;

/// Everything one frontend is started with. The command line is built from these fields
/// (never taken as an argv), so whoever may send one cannot run anything but a frontend.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub volume: String,
    /// `<run>/fuse/<volume>`.
    pub mountpoint: PathBuf,
    /// `<run>/fe-<hash>.sock` (`process::control_path`).
    pub control: PathBuf,
    /// storaged's frontend data socket, `<run>/nbd.sock`.
    pub data_socket: PathBuf,
    pub size: u64,
    pub generation: u64,
    pub readonly: bool,
    /// `HOST:PORT` of the volume's other members and the node's peers.
    pub endpoints: Vec<String>,
    pub io_deadline_ms: u64,
    /// Mutual TLS with the node's certificate; false: plaintext (`--insecure`).
    pub tls: bool,
}

impl LaunchRequest {
    pub fn new(spec: &FrontendSpec, control: &Path, launch: &Launch<'_>) -> Self {
        LaunchRequest {
            volume: launch.volume.to_string(),
            mountpoint: launch.mountpoint.to_path_buf(),
            control: control.to_path_buf(),
            data_socket: spec.data_socket.clone(),
            size: launch.size,
            generation: launch.generation,
            readonly: launch.readonly,
            endpoints: spec.endpoints.clone(),
            io_deadline_ms: u64::try_from(spec.io_deadline.as_millis()).unwrap_or(u64::MAX),
            tls: spec.tls_dir.is_some(),
        }
    }

    /// Checks every field against what a frontend of `run_dir` may be: a valid volume name,
    /// the paths storaged derives from it under `run_dir` and no others, sane numbers, and
    /// endpoints that are `HOST:PORT`.
    pub fn validate(&self, run_dir: &Path) -> Result<()> {
        super::validate_volume(&self.volume)?;
        let expect = |field: &'static str, got: &Path, want: &Path| {
            if got == want {
                Ok(())
            } else {
                Err(Error::invalid(
                    field,
                    format!(
                        "is {}, but a frontend of volume `{}` under run dir {} has {} (give \
                         storaged and the frontend host the same run dir)",
                        got.display(),
                        self.volume,
                        run_dir.display(),
                        want.display()
                    ),
                ))
            }
        };
        expect(
            "mountpoint",
            &self.mountpoint,
            &run_dir.join("fuse").join(&self.volume),
        )?;
        expect(
            "control",
            &self.control,
            &control_path(run_dir, &self.volume)?,
        )?;
        expect(
            "data_socket",
            &self.data_socket,
            &run_dir.join(super::nbd_local::SOCKET),
        )?;
        if self.size == 0 {
            return Err(Error::invalid("size", "must be greater than 0"));
        }
        if self.io_deadline_ms == 0 || self.io_deadline_ms > MAX_IO_DEADLINE_MS {
            return Err(Error::invalid(
                "io_deadline_ms",
                format!("{} is not in 1..={MAX_IO_DEADLINE_MS}", self.io_deadline_ms),
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::invalid(
                "endpoints",
                format!("{} given, at most {MAX_ENDPOINTS}", self.endpoints.len()),
            ));
        }
        for e in &self.endpoints {
            let port = e.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            let ok = matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0)
                && !e.starts_with('-')
                && !e.contains(|c: char| c == ',' || c.is_whitespace() || c.is_control());
            if !ok {
                return Err(Error::invalid(
                    "endpoints",
                    format!("`{e}` is not HOST:PORT"),
                ));
            }
        }
        Ok(())
    }

    /// The `storaged frontend` command line of this request, run by `exe`, with the node's
    /// certificate in `tls_dir` when the request asks for TLS.
    fn command(&self, exe: &Path, tls_dir: Option<&Path>) -> Result<Command> {
        let mut cmd = Command::new(exe);
        cmd.arg(SUBCOMMAND)
            .arg("--volume")
            .arg(&self.volume)
            .arg("--mountpoint")
            .arg(&self.mountpoint)
            .arg("--control")
            .arg(&self.control)
            .args(["--size", &self.size.to_string()])
            .args(["--generation", &self.generation.to_string()])
            .arg("--data-socket")
            .arg(&self.data_socket)
            .args(["--endpoints", &self.endpoints.join(",")])
            .args(["--io-deadline-ms", &self.io_deadline_ms.to_string()]);
        if self.readonly {
            cmd.arg("--readonly");
        }
        match (self.tls, tls_dir) {
            (true, Some(dir)) => cmd.arg("--tls-dir").arg(dir),
            (false, _) => cmd.arg("--insecure"),
            (true, None) => {
                return Err(Error::FailedPrecondition(
                    "storaged uses TLS but the frontend was given no --tls-dir (start the \
                     frontend host with the node's --tls-dir)"
                        .into(),
                ));
            }
        };
        Ok(cmd)
    }

    /// Starts the frontend in a session of its own (so the exit of whoever started it, a
    /// signal to its process group or a restart leaves it running), stdin from /dev/null,
    /// stdout and stderr appended to `log_file`.
    pub fn start(&self, exe: &Path, tls_dir: Option<&Path>, log_file: &Path) -> Result<Child> {
        let mut cmd = self.command(exe, tls_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(|e| Error::Internal(format!("opening {}: {e}", log_file.display())))?;
        let err_log = log
            .try_clone()
            .map_err(|e| Error::Internal(format!("opening {}: {e}", log_file.display())))?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err_log);
        // SAFETY: setsid is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
        }
        cmd.spawn()
            .map_err(|e| Error::Internal(format!("starting the frontend ({}): {e}", exe.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(run: &Path) -> LaunchRequest {
        LaunchRequest {
            volume: "pvc-1".into(),
            mountpoint: run.join("fuse/pvc-1"),
            control: control_path(run, "pvc-1").unwrap(),
            data_socket: run.join("nbd.sock"),
            size: 1 << 30,
            generation: 3,
            readonly: false,
            endpoints: vec!["10.0.0.2:7001".into(), "node-3.cairn:7001".into()],
            io_deadline_ms: 120_000,
            tls: true,
        }
    }

    fn field_of(r: Result<()>) -> &'static str {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn a_request_for_the_run_dir_passes() {
        let run = Path::new("/var/lib/cairn/run");
        request(run).validate(run).unwrap();
    }

    #[test]
    fn paths_outside_what_storaged_derives_are_refused() {
        let run = Path::new("/var/lib/cairn/run");
        let mut r = request(run);
        r.mountpoint = PathBuf::from("/etc");
        assert_eq!(field_of(r.validate(run)), "mountpoint");
        let mut r = request(run);
        r.control = run.join("fe-0000000000000000.sock");
        assert_eq!(field_of(r.validate(run)), "control");
        let mut r = request(run);
        r.data_socket = PathBuf::from("/tmp/nbd.sock");
        assert_eq!(field_of(r.validate(run)), "data_socket");
        // The same request under another run dir names the mismatch.
        let err = request(run)
            .validate(Path::new("/other/run"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("same run dir"), "{err}");
    }

    #[test]
    fn bad_names_numbers_and_endpoints_are_refused() {
        let run = Path::new("/run/c");
        let mut r = request(run);
        r.volume = "../../etc".into();
        assert_eq!(field_of(r.validate(run)), "volume");
        let mut r = request(run);
        r.size = 0;
        assert_eq!(field_of(r.validate(run)), "size");
        for ms in [0, MAX_IO_DEADLINE_MS + 1] {
            let mut r = request(run);
            r.io_deadline_ms = ms;
            assert_eq!(field_of(r.validate(run)), "io_deadline_ms");
        }
        for bad in [
            "no-port",
            ":7001",
            "a:0",
            "a:70000",
            "a:1,b:2",
            "--insecure:1",
            "a b:1",
        ] {
            let mut r = request(run);
            r.endpoints = vec![bad.into()];
            assert_eq!(field_of(r.validate(run)), "endpoints", "{bad}");
        }
    }

    #[test]
    fn unknown_fields_such_as_an_argv_do_not_parse() {
        let run = Path::new("/run/c");
        let mut v = serde_json::to_value(request(run)).unwrap();
        v["argv"] = serde_json::json!(["/bin/sh", "-c", "id"]);
        assert!(serde_json::from_value::<LaunchRequest>(v).is_err());
    }

    #[test]
    fn the_command_line_is_built_from_the_fields() {
        let run = Path::new("/run/c");
        let r = request(run);
        let cmd = r
            .command(Path::new("/bin/storaged"), Some(Path::new("/tls")))
            .unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], SUBCOMMAND);
        assert!(args.windows(2).any(|w| w == ["--tls-dir", "/tls"]));
        assert!(args.windows(2).any(|w| w == ["--generation", "3"]));
        // TLS asked for but no certificate here: refused, never a plaintext frontend.
        assert!(matches!(
            r.command(Path::new("/bin/storaged"), None),
            Err(Error::FailedPrecondition(_))
        ));
        let plain = LaunchRequest { tls: false, ..r };
        let cmd = plain.command(Path::new("/bin/storaged"), None).unwrap();
        assert!(cmd.get_args().any(|a| a == "--insecure"));
    }
}
