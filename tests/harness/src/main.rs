//! The `cairn-harness` binary: `up` runs a whole cluster, `apiserver` the API server alone
//! (both until SIGINT or SIGTERM); `chaos` runs the `cairn-chaos` binary beside it.

use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_harness::cluster::CairnInstall;
use cairn_harness::kubelet::images::ImageMap;
use cairn_harness::{Cluster, ClusterConfig};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "cairn-harness",
    version,
    about = "A minimal Kubernetes control plane and kubelets on one machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// API server, controllers, scheduler and N kubelets.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Also install Cairn: certificates and Secrets, the storage-node label, then
        /// `kubectl apply -k manifests/` and a wait until every Cairn pod is Ready.
        #[arg(long)]
        with_cairn: bool,
        /// How --with-cairn runs Cairn: `manifests` (as a user installs it) or
        /// `processes` (storaged, cairn-csi and the provisioners started by the harness).
        #[arg(long, value_enum, default_value = "manifests")]
        cairn_install: CairnInstall,
        /// Maps an image to a directory of executables (repeatable; NAME without a tag maps
        /// every tag): a container's command is looked up there first, and one without a
        /// command runs the executable named like the image repository's last component.
        /// `cairn` maps to the built binaries and `busybox` to the host's tools by default.
        #[arg(long = "image", value_name = "NAME=PATH")]
        images: Vec<String>,
    },
    /// The API server alone.
    Apiserver {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Fault injection on a storaged cluster with a linearizability verdict: runs
    /// `cairn-chaos run` (beside this binary) with these arguments (`--seed`, `--duration`,
    /// `--faults`, `--report`, ...; see `cairn-chaos run --help`). The harness nodes are not
    /// used yet: the cluster is storaged processes on fault filesystems.
    Chaos {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs `cairn-chaos run ARGS` from this binary's directory and exits with its status.
fn chaos(args: &[String]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("cairn-chaos");
    let status = std::process::Command::new(&bin)
        .arg("run")
        .args(args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!("{}: {e} (build it: cargo build --workspace)", bin.display())
        })?;
    std::process::exit(status.code().unwrap_or(2));
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut cairn_install = CairnInstall::Processes;
    let cfg = match cli.cmd {
        Cmd::Chaos { args } => return chaos(&args),
        Cmd::Up {
            nodes,
            data_dir,
            listen,
            with_cairn,
            cairn_install: install,
            images,
        } => {
            cairn_install = install;
            let mut map = ImageMap::with_defaults();
            for flag in &images {
                map.add_flag(flag).map_err(anyhow::Error::msg)?;
            }
            ClusterConfig {
                listen,
                with_cairn,
                cairn_install: install,
                images: std::sync::Arc::new(map),
                ..ClusterConfig::new(data_dir, nodes)
            }
        }
        Cmd::Apiserver { data_dir, listen } => ClusterConfig {
            listen,
            api_only: true,
            ..ClusterConfig::new(data_dir, 0)
        },
    };
    let cluster = Cluster::start(cfg).await?;
    println!("api-server: {}", cluster.api.url());
    println!("kubeconfig: {}", cluster.kubeconfig.display());
    if let Some(h) = &cluster.https_api {
        // What pods reach with in-cluster config; its CA is DIR/apiserver-pki/ca.crt.
        println!("api-server-https: {}", h.url());
    }
    for n in &cluster.nodes {
        println!("node: {n}");
    }
    if let Some(c) = &cluster.cairn {
        println!("storaged: {}", c.storaged.join(","));
        println!("admin-tls-dir: {}", c.tls_dir("admin").display());
        for n in &c.nodes {
            println!("local-disks: {n} {}", c.discovery_dir(n).display());
        }
        if cairn_install == CairnInstall::Processes {
            println!("csi-controller: unix://{}", c.controller_socket().display());
            println!("logs: {}", c.data_dir.join("logs").display());
        } else {
            println!(
                "logs: kubectl logs -n {} POD",
                cairn_harness::install::NAMESPACE
            );
        }
    }
    println!("ready");
    wait_for_signal().await?;
    cluster.shutdown().await;
    Ok(())
}
