//! The `cairn-faultfs` binary: `mount` serves a fault filesystem with a control socket until
//! SIGINT/SIGTERM; `ctl` sends one command (powerloss, eio, enospc, fsync-delay, clear, status).

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_faultfs::control::{ControlServer, send};
use cairn_faultfs::{FaultMount, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(about = "A power-loss and disk-fault FUSE filesystem")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mounts BACKING at MOUNTPOINT and serves the control socket until SIGINT/SIGTERM.
    Mount {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long)]
        control: PathBuf,
    },
    /// Sends a command: powerloss | eio OP [GLOB] | enospc BYTES | fsync-delay MS | clear | status.
    Ctl {
        #[arg(long)]
        control: PathBuf,
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-faultfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Mount {
            backing,
            mountpoint,
            control,
        } => {
            // Blocked before any thread starts, so every thread leaves them to sigwait below.
            let mut signals = SigSet::empty();
            signals.add(Signal::SIGINT);
            signals.add(Signal::SIGTERM);
            signals
                .thread_block()
                .map_err(|e| cairn_faultfs::Error::Control(format!("blocking signals: {e}")))?;
            let mount = FaultMount::mount(&backing, &mountpoint)?;
            let server = ControlServer::serve(&control, mount.controller())?;
            let signal = signals.wait();
            tracing::info!(?signal, "stopping");
            drop(server);
            mount.unmount()
        }
        Cmd::Ctl { control, command } => {
            let answer = send(&control, &command.join(" "))?;
            println!("{answer}");
            Ok(())
        }
    }
}
