//! The control socket: a Unix stream socket taking one command per line (see [`Command`]) and
//! answering one line, `ok ...` or `error ...`; and the client side that sends a command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crate::faults::Command;
use crate::mount::Controller;
use crate::{Error, Result};

/// A running control server; it stops when the process ends (the binary's lifetime).
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    _thread: JoinHandle<()>,
}

impl ControlServer {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn serve(path: &Path, controller: Controller) -> Result<ControlServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(path, e)),
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = session(stream, &controller) {
                            tracing::warn!(error = %e, "control connection failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "control accept failed"),
                }
            }
        });
        Ok(ControlServer {
            path: path.to_path_buf(),
            _thread: thread,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers each line of one connection.
fn session(stream: UnixStream, controller: &Controller) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = match line.parse::<Command>() {
            Ok(command) => {
                tracing::info!(command = %line.trim(), "control command");
                controller.apply(&command)
            }
            Err(e) => format!("error {e}"),
        };
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

/// Sends one command line to the control socket at `path`; returns the answer after `ok`,
/// or an error carrying the server's `error` line.
pub fn send(path: &Path, command: &str) -> Result<String> {
    let fail = |e: std::io::Error| Error::Control(format!("{}: {e}", path.display()));
    let mut stream = UnixStream::connect(path).map_err(fail)?;
    writeln!(stream, "{}", command.trim()).map_err(fail)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(fail)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(fail)?;
    let answer = answer.trim_end();
    match answer.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim_start().to_string()),
        None => Err(Error::Control(answer.to_string())),
    }
}
