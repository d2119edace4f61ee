//! `cairnctl`: the operator CLI for a storaged cluster (cluster status, volumes,
//! raw volume I/O and node membership), with tables or `-o json`.

mod cluster;
mod output;
mod snapshot;
mod volume;

use cairn_client::VolumeClient;
use clap::{Parser, Subcommand};
use tonic::{Code, Status};

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
    let client = VolumeClient::new(cli.endpoint)?;
    let out = cli.output;
    match cli.cmd {
        Cmd::Cluster { cmd } => cluster::cluster(&client, out, cmd).await,
        Cmd::Volume { cmd } => volume::run(&client, out, cmd).await,
        Cmd::Node { cmd } => cluster::node(&client, out, cmd).await,
        Cmd::Snapshot { cmd } => snapshot::run(&client, out, cmd).await,
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
