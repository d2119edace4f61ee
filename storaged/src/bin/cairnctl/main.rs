//! `cairnctl`: the operator CLI for a storaged cluster (cluster status, volumes,
//! raw volume I/O and node membership), with tables or `-o json`.

mod certs;
mod cluster;
mod output;
mod snapshot;
mod volume;

use std::path::PathBuf;

use cairn_client::{Security, VolumeClient};
use clap::{Parser, Subcommand};
use tonic::{Code, Status};

use certs::CertsCmd;
use cluster::{ClusterCmd, NodeCmd};
use output::Output;
use snapshot::SnapshotCmd;
use volume::VolumeCmd;

#[derive(Parser)]
#[command(name = "cairnctl", version, about = "Operate a Cairn storaged cluster")]
struct Cli {
    /// storaged address(es), comma separated.
    #[arg(
        long,
        env = "CAIRN_ENDPOINT",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    endpoint: Vec<String>,
    /// Directory holding `ca.crt`, `tls.crt` and `tls.key` (an `admin` certificate).
    #[arg(long, env = "CAIRN_TLS_DIR", global = true)]
    tls_dir: Option<PathBuf>,
    /// Talk to a plaintext (`--insecure`) storaged.
    #[arg(long, global = true)]
    insecure: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster-wide commands.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Volume commands.
    Volume {
        #[command(subcommand)]
        cmd: VolumeCmd,
    },
    /// Node membership commands.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Point-in-time snapshots of replicated volumes.
    Snapshot {
        #[command(subcommand)]
        cmd: SnapshotCmd,
    },
    /// The cluster CA and per-identity certificates (offline: no storaged needed).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
}

/// Exit codes: 0 ok, 1 other failure, 2 bad input, 3 not found, 4 conflict, 5 unavailable.
/// (clap exits with 2 on flags it cannot parse.)
fn exit_code(s: &Status) -> i32 {
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 4,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 5,
        _ => 1,
    }
}

async fn run(cli: Cli) -> Result<(), Status> {
    if let Cmd::Certs { cmd } = cli.cmd {
        return certs::run(cmd);
    }
    let security = Security::from_flags(cli.tls_dir.as_deref(), cli.insecure)?;
    let client = VolumeClient::new(cli.endpoint, security)?;
    let out = cli.output;
    match cli.cmd {
        Cmd::Cluster { cmd } => cluster::cluster(&client, out, cmd).await,
        Cmd::Volume { cmd } => volume::run(&client, out, cmd).await,
        Cmd::Node { cmd } => cluster::node(&client, out, cmd).await,
        Cmd::Snapshot { cmd } => snapshot::run(&client, out, cmd).await,
        Cmd::Certs { .. } => unreachable!("handled above"),
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairnctl: {e}");
            std::process::exit(1);
        }
    };
    if let Err(s) = rt.block_on(run(cli)) {
        eprintln!("cairnctl: {:?}: {}", s.code(), s.message());
        std::process::exit(exit_code(&s));
    }
}
