//! The `cairn-harness` binary: `up` runs a whole cluster, `apiserver` the API server alone
//! (both until SIGINT or SIGTERM); `chaos` runs the `cairn-chaos` binary beside it.

use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_harness::chaos_pods::{self, PodsConfig, nemesis::NodeFault};
use cairn_harness::cluster::CairnInstall;
use cairn_harness::kubelet::images::ImageMap;
use cairn_harness::{Cluster, ClusterConfig};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
        /// Seconds a kubelet may go without renewing its Lease before its node is marked
        /// NotReady and tainted unreachable (kube-controller-manager's flag of that name).
        #[arg(long, value_name = "SECONDS", default_value_t = 40)]
        node_monitor_grace_period: u64,
    },
    /// The API server alone.
    Apiserver {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Fault injection with a verdict. With `--workload pods`: a harness cluster with Cairn
    /// installed, writer pods appending fsynced records to Cairn volumes, whole-node faults
    /// (see `chaos --workload pods --help`). Otherwise runs `cairn-chaos run` (beside this
    /// binary) with these arguments (`--workload block,fs`, `--seed`, `--faults`, ...; see
    /// `cairn-chaos run --help`): storaged processes on fault filesystems, no harness nodes.
    Chaos {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `chaos --workload pods`: whole-node faults under writer pods (decision 066).
#[derive(Parser)]
#[command(name = "cairn-harness chaos")]
struct PodsCli {
    /// `pods`: writer pods append fsynced records to Cairn volumes through CSI and ext4.
    #[arg(long)]
    workload: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Writer pods, each with a `cairn-replicated` claim, spread over the nodes in turn.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// The cluster's data directory (default: a new one under the temp dir, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How long faults are injected (`90s`, `10m`, `500ms`, or seconds).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// The schedule's seed: the same seed gives the same faults, nodes, holds and gaps.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Comma-separated: node-kill, node-pause, storaged-kill, partition.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "node-kill,node-pause,storaged-kill,partition"
    )]
    faults: Vec<NodeFault>,
    /// Writes the report (ops, faults, lost, violations, unavailable_max_s, seed) as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Writes an SVG of the writers' ack latency over time, fault windows shaded, here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `90s`, `10m`, `1h`, `500ms`, or a number of seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let units = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    let (n, scale) = units
        .iter()
        .find_map(|(u, k)| s.strip_suffix(u).map(|n| (n, *k)))
        .unwrap_or((s, 1.0));
    n.parse::<u64>()
        .map(|n| std::time::Duration::from_secs_f64(n as f64 * scale))
        .map_err(|_| format!("{s:?}: expected e.g. 90s, 10m, 500ms"))
}

/// Whether `args` ask for the pods workload (`--workload pods` or `--workload=pods`).
fn pods_workload(args: &[String]) -> bool {
    args.iter().enumerate().any(|(i, a)| {
        a == "--workload=pods"
            || (a == "--workload" && args.get(i + 1).is_some_and(|w| w == "pods"))
    })
}

/// Runs the pods workload: the verdict table on stdout, the report and plot if asked; exits 1
/// when a record was lost or a writer failed, 2 when the run itself failed.
async fn chaos_pods(args: &[String]) -> anyhow::Result<()> {
    let cli = PodsCli::parse_from(
        std::iter::once("cairn-harness chaos".to_string()).chain(args.iter().cloned()),
    );
    anyhow::ensure!(cli.workload == "pods", "--workload: pods");
    let temp = cli.data_dir.is_none();
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cairn-chaos-pods-{}", std::process::id()))
    });
    let (stopping, stop) = watch::channel(false);
    let signalled = handle_signals(stopping)?;
    let cfg = PodsConfig {
        data_dir: data_dir.clone(),
        nodes: cli.nodes,
        writers: cli.writers.max(1),
        duration: cli.duration,
        seed: cli.seed,
        faults: cli.faults.clone(),
        stop: Some(stop),
    };
    let outcome = chaos_pods::run(cfg).await;
    if temp {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    signalled.abort();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos --workload pods failed: {e}");
            std::process::exit(2);
        }
    };
    print!("{}", outcome.table());
    if let Some(path) = &cli.report {
        std::fs::write(path, serde_json::to_string_pretty(&outcome.report)? + "\n")?;
    }
    if let Some(path) = &cli.plot {
        std::fs::write(path, outcome.plot())?;
    }
    std::process::exit(if outcome.clean() { 0 } else { 1 });
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

/// Handles SIGINT and SIGTERM from the first moment: the first one turns `stopping` true and
/// is returned through the handle (as the exit code a shell reports: 128 + signal number);
/// later ones only say that the harness is already stopping, so a teardown is never cut short.
fn handle_signals(stopping: watch::Sender<bool>) -> anyhow::Result<JoinHandle<i32>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let code = tokio::select! {
            _ = term.recv() => 143,
            _ = int.recv() => 130,
        };
        eprintln!(
            "{} received: stopping",
            if code == 130 { "SIGINT" } else { "SIGTERM" }
        );
        let _ = stopping.send(true);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("already stopping: tearing the cluster down");
            }
        });
        code
    }))
}

/// What a start-up on `data_dir` creates on the host: node holder processes, the bridge and
/// the nodes' veths, and mounts under `DIR/nodes` (the bind included).
fn host_objects(data_dir: &std::path::Path) -> Vec<String> {
    let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let nodes = data_dir.join("nodes");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&nodes).into_iter().flatten().flatten() {
        let pid = std::fs::read_to_string(e.path().join("holder.pid")).unwrap_or_default();
        let pid = pid.trim();
        if !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let node = e.file_name().to_string_lossy().into_owned();
            out.push(format!("process {pid} (holder of {node})"));
        }
    }
    if let Ok(i) = std::fs::read_to_string(data_dir.join("network")) {
        let i = i.trim();
        for link in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = link.file_name().to_string_lossy().into_owned();
            if name == format!("cairnbr{i}") || name.starts_with(&format!("cb{i}h")) {
                out.push(format!("link {name}"));
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in info.lines().filter_map(|l| l.split(' ').nth(4)) {
        if std::path::Path::new(m).starts_with(&nodes) {
            out.push(format!("mount {m}"));
        }
    }
    out
}

/// After a start-up cut short by a signal: tears down whatever the start-up had not (a
/// backstop, `node::cleanup_leftovers`) and prints what was removed.
fn report_interrupted(data_dir: &std::path::Path, before: &[String]) {
    cairn_harness::node::cleanup_leftovers(data_dir);
    let after = host_objects(data_dir);
    for o in before {
        if !after.contains(o) {
            println!("removed: {o}");
        }
    }
    for o in &after {
        eprintln!("left behind: {o}");
    }
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
        Cmd::Chaos { args } if pods_workload(&args) => return chaos_pods(&args).await,
        Cmd::Chaos { args } => return chaos(&args),
        Cmd::Up {
            nodes,
            data_dir,
            listen,
            with_cairn,
            cairn_install: install,
            images,
            node_monitor_grace_period,
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
                node_monitor_grace_period: std::time::Duration::from_secs(
                    node_monitor_grace_period.max(1),
                ),
                ..ClusterConfig::new(data_dir, nodes)
            }
        }
        Cmd::Apiserver { data_dir, listen } => ClusterConfig {
            listen,
            api_only: true,
            ..ClusterConfig::new(data_dir, 0)
        },
    };
    let (stopping, mut stop_rx) = watch::channel(false);
    let signalled = handle_signals(stopping)?;
    let data_dir = cfg.data_dir.clone();
    let inventory = {
        let dir = data_dir.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            // What exists when the signal arrives (the teardown's "removed" list).
            let _ = rx.wait_for(|s| *s).await;
            host_objects(&dir)
        })
    };
    let started = Cluster::start_until(cfg, stop_rx.clone()).await;
    if *stop_rx.borrow() {
        if let Ok(cluster) = started {
            cluster.shutdown().await;
        }
        let before = inventory.await.unwrap_or_default();
        report_interrupted(&data_dir, &before);
        std::process::exit(signalled.await.unwrap_or(1));
    }
    let cluster = started?;
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
    let _ = stop_rx.wait_for(|s| *s).await;
    cluster.shutdown().await;
    Ok(())
}
