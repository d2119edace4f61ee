//! The `cairn-chaos` binary: `cairn-chaos run` brings up a storaged cluster on fault filesystems and
//! namespaces, breaks it on a seeded schedule, prints the verdict table, exits non-zero on a finding.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_chaos::workload::Workload;
use cairn_chaos::{FaultKind, RunConfig, RunOutcome, Targets, run};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-chaos",
    version,
    about = "Fault injection on a local storaged cluster with a linearizability verdict"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one experiment (needs root and /dev/fuse: the nodes' data dirs are fault filesystems).
    Run(Box<RunArgs>),
    /// Spins until this process's monotonic clock has advanced by `--for`, then prints the
    /// clock's reading: run under a clock fault's environment, a caller timing it from outside
    /// sees the rate libfaketime gives.
    ClockProbe {
        #[arg(long = "for", default_value = "1s", value_parser = parse_duration)]
        spin: Duration,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The schedule's seed: the same seed gives the same faults in the same order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How long the workload runs under faults (`500ms`, `30s`, `10m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Comma-separated faults: kill, pause, powerloss, powerloss-all, eio, disk-full, slow-disk,
    /// partition-isolate, partition-split, partition-bridge, partition-one-way, or partition
    /// for all four shapes (partitions need nftables), clock and clock-slow (a node's clocks
    /// 2x fast or half as fast, through Debian's faketime), node-loss (a node killed and
    /// wiped for good; needs 4+ nodes).
    #[arg(
        long,
        default_value = "kill,pause,powerloss,powerloss-all,eio,disk-full,slow-disk,partition",
        value_parser = parse_faults
    )]
    faults: Faults,
    /// The run's name: its network namespaces, bridge and nftables table carry it, and a run
    /// removes what a crashed run of the same name left.
    #[arg(long, default_value = "chaos")]
    name: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Comma-separated workloads: block (versioned blocks through the volume client), fs (ext4
    /// on a volume attached on node 1 through the FUSE frontend; faults never stop node 1).
    #[arg(long, default_value = "block", value_parser = parse_workloads)]
    workload: Workloads,
    /// Up to this many faults active at once (1: one at a time). Never more than a minority of
    /// any group's replicas (the meta group's too) broken or catching up at once.
    #[arg(long, default_value_t = 1)]
    overlap: usize,
    /// Would let overlapping faults break a majority of a group's replicas: not supported.
    #[arg(long)]
    allow_majority_loss: bool,
    /// Volumes (3 replicas each) the block workload writes.
    #[arg(long, default_value_t = 3)]
    volumes: usize,
    /// The quiet gap before each fault, drawn from `MIN..MAX` (the maximum excluded).
    #[arg(long, default_value = "500ms..2500ms", value_parser = parse_gap)]
    gap: std::ops::Range<u64>,
    /// How long each fault is held, drawn from `MIN..MAX` (the maximum excluded).
    #[arg(long, default_value = "500ms..4s", value_parser = parse_hold)]
    hold: std::ops::Range<u64>,
    /// Single-node faults hit `any` node, always a volume's `leaders`, or always `node:N`.
    #[arg(long, default_value = "any", value_parser = parse_targets)]
    targets: Targets,
    /// Writes the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Writes the history (every operation, final reads included) as JSON lines here.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Writes an SVG of latency over time (per workload) with the fault windows shaded here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The storaged binary (default: the one beside this binary).
    #[arg(long)]
    storaged: Option<PathBuf>,
    /// Where the run's mounts and data dirs go (a new directory, removed at the end).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
}

#[derive(Clone, Debug)]
struct Faults(Vec<FaultKind>);

#[derive(Clone, Debug)]
struct Workloads(Vec<Workload>);

fn parse_workloads(s: &str) -> Result<Workloads, String> {
    Workload::parse_list(s)
        .map(Workloads)
        .map_err(|e| e.to_string())
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    FaultKind::parse_list(s)
        .map(Faults)
        .map_err(|e| e.to_string())
}

fn parse_targets(s: &str) -> Result<Targets, String> {
    match s {
        "any" => Ok(Targets::Any),
        "leaders" => Ok(Targets::Leaders),
        other => match other.strip_prefix("node:").map(str::parse::<u64>) {
            Some(Ok(id)) if id > 0 => Ok(Targets::Node(id)),
            _ => Err(format!("unknown targets {other:?} (any, leaders, node:N)")),
        },
    }
}

fn parse_gap(s: &str) -> Result<std::ops::Range<u64>, String> {
    cairn_chaos::schedule::parse_range("gap", s, parse_duration)
}

fn parse_hold(s: &str) -> Result<std::ops::Range<u64>, String> {
    cairn_chaos::schedule::parse_range("hold", s, parse_duration)
}

/// `250ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 30s, 10m, 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        other => Err(format!("bad duration unit {other:?} in {s:?}")),
    }
}

fn sibling_storaged() -> PathBuf {
    cairn_storaged::testkit::sibling_bin("storaged")
}

/// The verdict table, as the issue describes it.
fn print_table(outcome: &RunOutcome, took: Duration, budget: Option<&str>) {
    let budget = budget.map(str::to_string);
    let r = &outcome.report;
    println!("seed                      {}", r.seed);
    println!(
        "operations                ok {}, failed {}, unknown {}",
        r.ops.ok, r.ops.failed, r.ops.unknown
    );
    let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults                    {}", faults.join(", "));
    let beside = outcome.faults.iter().filter(|f| f.overlapping > 0).count();
    if beside > 0 {
        let stacked = outcome.faults.iter().filter(|f| f.stacked).count();
        println!(
            "faults at once            {beside} started beside another, {stacked} of them on nodes already broken"
        );
    }
    if let Some(budget) = &budget {
        println!("budget (from the record)  {budget}");
    }
    if let Some(fs) = &r.fs {
        println!(
            "fs writes read back       ok {}, lost {}, corrupt {}; write errors {}; fsck -n {}",
            fs.ok,
            fs.lost,
            fs.corrupt,
            fs.errors,
            if fs.fsck_clean { "clean" } else { "NOT CLEAN" }
        );
    }
    println!("acknowledged writes lost  {}", r.lost);
    println!("violations                {}", r.violations);
    for (kind, s) in &r.unavailable_max_s {
        println!("longest unavailability    {kind}: {s:.2} s");
    }
    println!("recovery after final heal {:.2} s", outcome.recovery_s);
    let u = &outcome.usage;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "storaged usage            CPU {:.1} s in {:.0} s ({:.2} cores), written {:.1} MiB (wchar), {:.1} MiB (write_bytes), fault filesystems wrote {:.1} MiB to disk; {} processes",
        u.cpu_s,
        u.over_s,
        u.cpu_s / u.over_s.max(1e-9),
        mib(u.wchar),
        mib(u.write_bytes),
        mib(u.faultfs_write_bytes),
        u.processes
    );
    println!("run time                  {:.1} s", took.as_secs_f64());
    let problems = outcome.problems();
    if !problems.is_empty() {
        println!("problems:\n{problems}");
    }
    println!(
        "verdict                   {}",
        if r.clean() { "PASS" } else { "FAIL" }
    );
}

/// The first SIGINT or SIGTERM, by name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cairn_faultfs=warn,fuser=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match Cli::parse().cmd {
        Cmd::Run(args) => *args,
        Cmd::ClockProbe { spin } => {
            let started = std::time::Instant::now();
            while started.elapsed() < spin {
                std::hint::spin_loop();
            }
            println!("{:.3}", started.elapsed().as_secs_f64());
            return ExitCode::SUCCESS;
        }
    };
    if args.allow_majority_loss {
        eprintln!(
            "--allow-majority-loss: not supported: overlapping faults never break more than a minority of a group's replicas (powerloss-all does, alone)"
        );
        return ExitCode::from(2);
    }
    let config = RunConfig {
        nodes: args.nodes,
        duration: args.duration,
        seed: args.seed,
        faults: args.faults.0,
        report: args.report,
        history: args.history,
        plot: args.plot,
        work_dir: args.work_dir,
        targets: args.targets,
        volumes: args.volumes,
        name: args.name,
        workloads: args.workload.0,
        overlap: args.overlap,
        pacing: cairn_chaos::schedule::Pacing {
            gap_ms: args.gap,
            hold_ms: args.hold,
        },
        ..RunConfig::new(args.storaged.unwrap_or_else(sibling_storaged))
    };
    let started = std::time::Instant::now();
    // On SIGINT or SIGTERM the run is dropped: its processes are killed and its mounts removed.
    let result = tokio::select! {
        r = run(&config) => r,
        signal = interrupted() => {
            eprintln!("chaos run (seed {}) interrupted by {signal}; cleaned up", config.seed);
            return ExitCode::from(130);
        }
    };
    match result {
        Ok(outcome) => {
            // With --overlap the record must prove the minority budget (catch-ups included).
            let audit = (config.overlap > 1).then(|| {
                let nodes: Vec<u64> = (1..=config.nodes as u64).collect();
                cairn_chaos::audit::audit(&outcome.faults, &outcome.members, &nodes)
            });
            let budget = audit.as_ref().map(|a| match a {
                Ok(a) => format!(
                    "held: at most {} nodes broken at once over {} instants; {} catch-ups proven, {} not (counted broken to the end)",
                    a.most_broken, a.instants, a.proven, a.unproven
                ),
                Err(e) => format!("NOT HELD: {e}"),
            });
            print_table(&outcome, started.elapsed(), budget.as_deref());
            let held = audit.is_none_or(|a| a.is_ok());
            match outcome.report.clean() && held {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(1),
            }
        }
        Err(e) => {
            eprintln!("chaos run (seed {}) could not complete: {e}", config.seed);
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fault_lists_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7x").is_err());
        assert!(parse_duration("s").is_err());
        let f = parse_faults("kill,pause,powerloss").unwrap();
        assert_eq!(
            f.0,
            [FaultKind::Kill, FaultKind::Pause, FaultKind::Powerloss]
        );
        assert_eq!(
            parse_faults("kill,partition").unwrap().0,
            [
                FaultKind::Kill,
                FaultKind::PartitionIsolate,
                FaultKind::PartitionSplit,
                FaultKind::PartitionBridge,
                FaultKind::PartitionOneWay
            ]
        );
        let unknown = parse_faults("kill,meteor").unwrap_err();
        assert!(unknown.contains("\"meteor\"") && unknown.contains("partition-isolate"));
    }
}
