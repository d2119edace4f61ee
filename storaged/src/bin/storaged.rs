//! `storaged`: runs one storage node (meta group member or learner, volume
//! replicas, block I/O and node-local attach) until SIGINT/SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_storaged::discovery::{self, Plan, Seeds};
use cairn_storaged::frontend::host;
use cairn_storaged::frontend::process::SUBCOMMAND;
use cairn_storaged::frontend::standalone;
use cairn_storaged::meta::placement;
use cairn_storaged::node::{NodeConfig, ReadPolicy};
use cairn_storaged::peers;
use cairn_storaged::raft::ChannelCache;
use cairn_storaged::repair::RepairConfig;
use cairn_storaged::server::{ServerOptions, start};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "storaged",
    version,
    about = "Cairn's Raft-replicated block storage node"
)]
struct Args {
    /// This node's id (a positive integer, unique in the cluster). Without it the id comes
    /// from the data dir's stamp, else from the seeds (`--join`, `--bootstrap-expect`).
    #[arg(long)]
    node_id: Option<u64>,
    /// Address to listen on, e.g. 127.0.0.1:7001.
    #[arg(long)]
    listen: SocketAddr,
    /// Address peers use to reach this node (defaults to --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Directory for the node's RocksDB and runtime state.
    #[arg(long)]
    data_dir: PathBuf,
    /// Initial meta voters: `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (IPs or DNS names,
    /// resolved at every connect). Omit when joining with --join.
    #[arg(long, value_delimiter = ',')]
    initial_cluster: Vec<String>,
    /// Seeds: `HOST:PORT` of running nodes (a DNS name may resolve to several). The node
    /// registers itself as a learner; without --node-id it also finds its id through them.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Without --node-id: once this many seed addresses are known and no cluster runs, the
    /// lowest of them form the first cluster (ids 1..=N); every other node joins it.
    #[arg(long)]
    bootstrap_expect: Option<usize>,
    /// Node name used for topology (`topology.cairn.dev/node`); defaults to `node-<id>`,
    /// required without --node-id (e.g. the Kubernetes node name).
    #[arg(long)]
    node_name: Option<String>,
    /// Node labels, e.g. `--label zone=a` (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Capacity offered to volumes, e.g. `100GiB` (default: the data directory's filesystem size).
    #[arg(long)]
    capacity: Option<String>,
    /// Free space kept on the data filesystem, e.g. `2GiB`: below it, writes to volumes with a
    /// replica here are refused (RESOURCE_EXHAUSTED, ENOSPC at the frontend) before the disk
    /// fills; deletes still work (default: 5 % of the filesystem, at most 1GiB).
    #[arg(long)]
    reserve: Option<String>,
    /// Thin over-provisioning: provisioned volume sizes may reach `--capacity` times this, e.g.
    /// `2` (default 1.0: none). Data really written must still fit (RESOURCE_EXHAUSTED if not).
    #[arg(long, default_value = "1.0")]
    overcommit: String,
    /// Memory for recently written and read block data (RocksDB blob cache), e.g. `1GiB`
    /// (default: 256MiB).
    #[arg(long)]
    cache_size: Option<String>,
    /// Value log size below which none of it is collected, e.g. `1GiB`: overwritten data is
    /// reclaimed (its live chunks copied forward) only past it (default: 256MiB).
    #[arg(long, default_value = "256MiB")]
    value_log_floor: String,
    /// Log entries after which a volume's Raft group snapshots and purges its log (it also
    /// does so after every 32 MiB of writes).
    #[arg(long, default_value_t = 4_096)]
    snapshot_logs: u64,
    /// Milliseconds without a write after which a volume's Raft group goes quiet: its
    /// timers stop on every member until its next I/O or message (0: never).
    #[arg(long, default_value_t = 2_000)]
    quiet_after_ms: u64,
    /// How leaders make reads linearizable: `lease` (no round trip within half the leader's
    /// lease; assumes no clock runs over 2x as fast as another) or `read-index` (a quorum
    /// confirms the leader for every read; safe whatever the clocks do).
    #[arg(long, value_enum, default_value_t = ReadPolicy::Lease)]
    read_policy: ReadPolicy,
    /// Runtime state: the attachment table, FUSE mountpoints and frontend control sockets
    /// (default: DATA_DIR/run). Must be on a filesystem that holds Unix sockets.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Serve Prometheus metrics (`/metrics`) and `/healthz` on this address, e.g.
    /// 0.0.0.0:9810. Off by default.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Directory holding this node's `ca.crt`, `tls.crt` and `tls.key` (a `node:<id>`
    /// certificate): every call in and out uses mutual TLS.
    #[arg(long, env = "CAIRN_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Serve and call peers in plaintext, without authentication (tests only).
    #[arg(long)]
    insecure: bool,
    /// A volume replica on a node unreachable this long is rebuilt elsewhere, e.g. `5m`,
    /// `30s`, `500ms` (the meta leader's value is the one in force).
    #[arg(long, default_value = "5m")]
    replica_down_timeout: String,
    /// Replicas rebuilt at once onto one node, and volume snapshots one node sends at once.
    #[arg(long, default_value_t = 2)]
    rebuild_concurrency: usize,
    /// Bytes a second of volume snapshots (rebuilds, catching up) this node sends, shared by
    /// all its streams, e.g. `100MiB` or `1GiB/s`.
    #[arg(long, default_value = "100MiB")]
    rebuild_rate: String,
    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Serve FUSE attachments inside storaged instead of one `storaged frontend` process
    /// each: one hop less per I/O, but a restart of storaged then fails mounted volumes
    /// (EIO until staged again). For benchmarks and tests, not production.
    #[arg(long, conflicts_with = "frontend_host")]
    in_process_frontends: bool,
    /// The socket of this node's frontend host (`storaged frontend-host`, in a container of
    /// its own): it starts the FUSE frontends, so a restart of storaged's container leaves
    /// mounted volumes alone. An attach fails (UNAVAILABLE) while it does not answer.
    #[arg(long)]
    frontend_host: Option<PathBuf>,
}

fn parse_kv(field: &str, s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("--{field}: `{s}` is not KEY=VALUE"))
}

/// A duration such as `5m`, `30s`, `500ms`, `1h` or `1m30s`.
fn parse_duration(field: &str, s: &str) -> Result<Duration, String> {
    let bad = || format!("--{field} `{s}`: not a duration such as 5m, 30s or 500ms");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        total += d;
        rest = &rest[unit..];
    }
    if total.is_zero() {
        return Err(format!("--{field} `{s}`: must be greater than 0"));
    }
    Ok(total)
}

fn fs_size(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

/// The checks of the identity flags that need nothing resolved.
fn check_identity_flags(args: &Args, initial: &BTreeMap<u64, String>) -> Result<(), String> {
    if args.node_id == Some(0) {
        return Err("--node-id: must be greater than 0".into());
    }
    for entry in &args.join {
        peers::check_host_port("join", entry)?;
    }
    if initial.is_empty() && args.join.is_empty() {
        return Err("one of --initial-cluster or --join is required".into());
    }
    match (args.node_id, args.bootstrap_expect) {
        (Some(_), Some(_)) => {
            Err("--bootstrap-expect: only without --node-id (the seeds then choose the ids)".into())
        }
        (Some(_), None) => Ok(()),
        (None, Some(0)) => Err("--bootstrap-expect: must be at least 1".into()),
        (None, _) if !initial.is_empty() => Err(
            "--initial-cluster: needs --node-id; without an id, give the seeds with --join \
             and --bootstrap-expect"
                .into(),
        ),
        (None, _) if args.join.is_empty() => {
            Err("--join: required without --node-id (the seeds to find the cluster)".into())
        }
        (None, _) if args.node_name.is_none() => {
            Err("--node-name: required without --node-id".into())
        }
        (None, _) => Ok(()),
    }
}

/// Why storaged stopped: a message and the process's exit code.
struct Exit {
    code: i32,
    message: String,
}

/// Bad flags or a start that failed.
const EXIT_USAGE: i32 = 2;
/// This node's data dir cannot be used (e.g. its meta group does not open).
const EXIT_CORRUPT: i32 = 3;

impl From<String> for Exit {
    fn from(message: String) -> Self {
        Exit {
            code: EXIT_USAGE,
            message,
        }
    }
}

impl From<cairn_storaged::Error> for Exit {
    fn from(e: cairn_storaged::Error) -> Self {
        let code = match e {
            cairn_storaged::Error::Corrupt(_) => EXIT_CORRUPT,
            _ => EXIT_USAGE,
        };
        Exit {
            code,
            message: e.to_string(),
        }
    }
}

fn run(args: Args) -> Result<(), Exit> {
    let security = cairn_client::Security::from_flags(args.tls_dir.as_deref(), args.insecure)
        .map_err(|s| s.message().to_string())?;
    let mut initial = BTreeMap::new();
    for entry in &args.initial_cluster {
        let (id, addr) = parse_kv("initial-cluster", entry)?;
        let id: u64 = id
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("--initial-cluster: `{id}` is not a node id"))?;
        peers::check_host_port("initial-cluster", &addr)?;
        initial.insert(id, addr);
    }
    check_identity_flags(&args, &initial)?;
    if args.rebuild_concurrency == 0 {
        return Err(String::from("--rebuild-concurrency: must be at least 1").into());
    }
    let mut labels: BTreeMap<String, String> = args
        .labels
        .iter()
        .map(|l| parse_kv("label", l))
        .collect::<Result<_, _>>()?;
    let overcommit = placement::parse_overcommit(&args.overcommit)?;
    if labels.contains_key(placement::OVERCOMMIT_LABEL) {
        return Err(format!(
            "--label: `{}` is set by --overcommit",
            placement::OVERCOMMIT_LABEL
        )
        .into());
    }
    // Registered with the node's record (absent: 1.0).
    if overcommit != 1.0 {
        labels.insert(
            placement::OVERCOMMIT_LABEL.to_string(),
            overcommit.to_string(),
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("--data-dir {}: {e}", args.data_dir.display()))?;
    if let Some(c) = &args.cache_size {
        let bytes = parse_size::parse_size(c)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| format!("--cache-size `{c}`: not a size such as 1GiB"))?;
        #[cfg(feature = "rocks")]
        cairn_storaged::engine::rocks::set_blob_cache_bytes(bytes);
        #[cfg(not(feature = "rocks"))]
        let _ = bytes;
    }
    let capacity = match &args.capacity {
        Some(c) => parse_size::parse_size(c).map_err(|e| format!("--capacity `{c}`: {e}"))?,
        None => fs_size(&args.data_dir),
    };
    let value_log_floor = parse_size::parse_size(&args.value_log_floor)
        .map_err(|e| format!("--value-log-floor `{}`: {e}", args.value_log_floor))?;
    let reserve = args
        .reserve
        .as_deref()
        .map(|r| parse_size::parse_size(r).map_err(|e| format!("--reserve `{r}`: {e}")))
        .transpose()?;
    let addr = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    peers::check_host_port("advertise", &addr)?;
    if args.node_id.is_none()
        && addr
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
    {
        return Err(format!(
            "--advertise: `{addr}` is not an address peers can reach: give this node's own"
        )
        .into());
    }
    let repair = RepairConfig {
        down_timeout: parse_duration("replica-down-timeout", &args.replica_down_timeout)?,
        concurrency: args.rebuild_concurrency,
        rate: cairn_storaged::rebuild::parse_rate("rebuild-rate", &args.rebuild_rate)?,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let plan = match args.node_id {
            Some(id) => Plan {
                id,
                initial_cluster: initial,
            },
            None => {
                let seeds = Seeds {
                    data_dir: &args.data_dir,
                    seeds: &args.join,
                    expect: args.bootstrap_expect,
                    advertise: &addr,
                };
                discovery::plan(seeds, &ChannelCache::new(security.clone()))
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        // Compared resolved: `--advertise $POD_IP:7001` is the node a DNS entry names.
        if let Some(expected) = plan.initial_cluster.get(&plan.id)
            && !peers::same_endpoint("initial-cluster", expected, &addr).await
        {
            // A node that has run before (its data dir stamped with its id) and comes back
            // elsewhere (a pod that moved) re-registers at its new address, and its groups
            // follow. At a first start the mismatch is a mistake in the flags.
            let ran_before = cairn_storaged::identity::read_stamp(&args.data_dir)
                .ok()
                .flatten()
                .is_some_and(|s| s.node_id == plan.id);
            if !ran_before {
                return Err(format!(
                    "--initial-cluster says node {} is at {expected}, but this node advertises \
                     {addr}, which resolves elsewhere",
                    plan.id
                )
                .into());
            }
            tracing::warn!(node = plan.id, listed = %expected, advertised = %addr, "this node has moved since --initial-cluster was written: it re-registers at the address it advertises");
        }
        let cfg = NodeConfig {
            id: plan.id,
            name: args
                .node_name
                .clone()
                .unwrap_or_else(|| format!("node-{}", plan.id)),
            addr,
            data_dir: args.data_dir.clone(),
            initial_cluster: plan.initial_cluster,
            join: args.join.clone(),
            labels,
            capacity_bytes: capacity,
            snapshot_logs: args.snapshot_logs,
            security,
            quiet_after: (args.quiet_after_ms > 0)
                .then(|| std::time::Duration::from_millis(args.quiet_after_ms)),
            repair,
            reserve,
            in_process_frontends: args.in_process_frontends,
            frontend_host: args.frontend_host.clone(),
            read_policy: args.read_policy,
            value_log_floor,
        };
        let running = start(ServerOptions {
            node: cfg,
            listen: args.listen,
            join: args.join,
            metrics_addr: args.metrics_addr,
            run_dir: args
                .run_dir
                .clone()
                .unwrap_or_else(|| args.data_dir.join("run")),
        })
        .await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        running.stop().await;
        Ok(())
    })
}

fn main() {
    // `storaged frontend ...`: one volume's FUSE frontend, started by the attach manager;
    // `storaged frontend-host ...`: starts frontends for storaged, in a container of its own.
    if hidden_subcommand(SUBCOMMAND, standalone::run)
        || hidden_subcommand(host::SUBCOMMAND, host::run)
    {
        return;
    }
    let args = Args::parse();
    init_logs(&args.log_format);
    // Crash points armed by `FAILPOINTS` (tests only; nothing is armed without it).
    let _failpoints = fail::FailScenario::setup();
    if let Err(e) = run(args) {
        eprintln!("storaged: {}", e.message);
        std::process::exit(e.code);
    }
}

/// Runs `storaged NAME ...` with `run` when the first argument is `NAME`; whether it did.
fn hidden_subcommand<A: Parser>(name: &str, run: fn(A) -> Result<(), String>) -> bool {
    if std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new(name)) {
        return false;
    }
    let args = A::parse_from(std::env::args_os().skip(1));
    init_logs("text");
    if let Err(e) = run(args) {
        eprintln!("storaged {name}: {e}");
        std::process::exit(2);
    }
    true
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    if format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colour only on a terminal: log files and journald get plain `key=value` text.
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
}
