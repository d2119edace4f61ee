//! A chaos run: a storaged cluster on fault filesystems, the block workload, faults on the seed's
//! schedule, then a final heal, recovery, final reads and the checker's verdict.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1 as pb;
use cairn_storaged::tls::Identity;

use crate::checker::{self, FinalReadProblem};
use crate::cluster::FaultCluster;
use crate::error::Error;
use crate::history::{Op, Recorder};
use crate::nemesis::{self, FaultKind, FaultRecord};
use crate::report::RunReport;
use crate::schedule::{Schedule, Targets};
use crate::workload::Workload;
use crate::workload::block::{BLOCK, BlockWorkload};
use crate::workload::fs::{Ack, FsVolume};

/// What a run does. The first five fields are `cairn-harness chaos`'s flags (`--nodes`,
/// `--duration`, `--seed`, `--faults`, `--report`); the rest have defaults.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub nodes: usize,
    /// How long the workload runs with faults (a fault in progress when it ends is healed).
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// Where to write the report as JSON.
    pub report: Option<PathBuf>,
    /// Where to write the history (final reads included) as JSON lines, for `history::read_jsonl`.
    pub history: Option<PathBuf>,
    /// Where to write an SVG of latency over time with the faults shaded (`plot::svg`).
    pub plot: Option<PathBuf>,
    /// The storaged binary.
    pub storaged: PathBuf,
    /// Where the run's mounts and data live (a new directory under it, removed afterwards).
    pub work_dir: PathBuf,
    pub targets: Targets,
    pub volumes: usize,
    pub blocks_per_volume: u64,
    pub clients_per_volume: usize,
    /// Every disk ignores fsyncs of RocksDB's write-ahead logs (`*.log`) once the volumes exist
    /// (they succeed, nothing becomes durable): a broken cluster, to show that a run catches the
    /// writes a power loss then loses.
    pub lying_disks: bool,
    /// How long the cluster may take to become whole after each fault and after the run.
    pub recovery: Duration,
    /// The run's name, in its network's names (namespaces `cairn-chaos-NAME-K`, nftables
    /// table `cairn-chaos-NAME`): a new run removes what a crashed run of this name left.
    pub name: String,
    /// The workloads that run under the faults (`block`, `fs`).
    pub workloads: Vec<Workload>,
    /// Up to this many faults active at once (1: one at a time, each healed and the cluster
    /// whole again before the next); see `overlap`.
    pub overlap: usize,
    /// The bounds of each fault's quiet gap and hold.
    pub pacing: crate::schedule::Pacing,
}

impl RunConfig {
    pub fn new(storaged: PathBuf) -> RunConfig {
        RunConfig {
            nodes: 3,
            duration: Duration::from_secs(30),
            seed: 0,
            // Node loss needs a fourth node: asked for by name.
            faults: FaultKind::ALL
                .into_iter()
                .filter(|k| *k != FaultKind::NodeLoss)
                .collect(),
            report: None,
            history: None,
            plot: None,
            storaged,
            work_dir: std::env::temp_dir(),
            targets: Targets::Any,
            volumes: 3,
            blocks_per_volume: 8,
            clients_per_volume: 3,
            recovery: Duration::from_secs(60),
            lying_disks: false,
            name: "chaos".into(),
            workloads: vec![Workload::Block],
            overlap: 1,
            pacing: crate::schedule::Pacing::default(),
        }
    }
}

/// Everything a run found: the report, and the evidence behind it.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: RunReport,
    pub faults: Vec<FaultRecord>,
    pub history: Vec<Op>,
    pub check: checker::Report,
    pub final_reads: Vec<FinalReadProblem>,
    /// From the end of the workload (every fault healed) to a whole cluster.
    pub recovery_s: f64,
    /// The fs workload's acknowledged writes, in the order acknowledged (empty without it).
    pub fs_acks: Vec<Ack>,
    /// Each volume's members at the end.
    pub members: std::collections::BTreeMap<String, Vec<u64>>,
    /// What the storaged processes used from the cluster's start to the final reads.
    pub usage: crate::usage::Usage,
}

impl RunOutcome {
    /// The violations and final-read problems, one a line, for a failure message.
    pub fn problems(&self) -> String {
        let mut lines: Vec<String> = self
            .check
            .violations()
            .map(|(key, v)| format!("{key}: {v}"))
            .collect();
        lines.extend(self.final_reads.iter().map(|p| format!("{p:?}")));
        lines.extend(
            self.check
                .gave_up()
                .map(|(key, g)| format!("{key}: checker gave up: {g:?}")),
        );
        lines.join("\n")
    }
}

/// With `node-loss` among the faults, a member silent this long is replaced
/// (`storaged --replica-down-timeout`); other runs keep storaged's default (minutes), so that
/// their faults never move replicas.
pub const REPLICA_DOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The fs workload's volume, its size and the node it is attached on.
pub const FS_VOLUME: &str = "chaos-fs";
pub const FS_VOLUME_SIZE: u64 = 64 << 20;
pub const FS_NODE: u64 = 1;

/// The volume size: enough for the blocks, in whole MiB.
fn volume_size(blocks: u64) -> u64 {
    (blocks * BLOCK as u64).div_ceil(1 << 20).max(1) << 20
}

/// Runs the whole experiment described by `config`. Needs root (FUSE, network namespaces)
/// and, for partitions, nftables.
pub async fn run(config: &RunConfig) -> Result<RunOutcome, Error> {
    let (block, fs) = (
        config.workloads.contains(&Workload::Block),
        config.workloads.contains(&Workload::Fs),
    );
    if config.nodes < 3 || (block && (config.volumes == 0 || config.blocks_per_volume == 0)) {
        return Err(Error::Config(
            "a run needs at least 3 nodes, and the block workload one volume and one block".into(),
        ));
    }
    if let Targets::Node(id) = config.targets
        && id as usize > config.nodes
    {
        return Err(Error::Config(format!(
            "targets: node:{id} is not one of the run's {} nodes",
            config.nodes
        )));
    }
    if config.overlap == 0 {
        return Err(Error::Config(
            "overlap: must be at least 1 (1 runs one fault at a time)".into(),
        ));
    }
    if !block && !fs {
        return Err(Error::Config("workload: none named (block, fs)".into()));
    }
    if fs && config.faults.contains(&FaultKind::PowerlossAll) {
        return Err(Error::Config(format!(
            "faults: powerloss-all stops node {FS_NODE}'s storaged, where the fs workload's volume is attached (not supported with --workload fs yet)"
        )));
    }
    let node_loss = config.faults.contains(&FaultKind::NodeLoss);
    if node_loss && config.nodes <= nemesis::REPLICAS {
        return Err(Error::Config(format!(
            "faults: node-loss needs more than {} nodes (one to rebuild on), not {}",
            nemesis::REPLICAS,
            config.nodes
        )));
    }
    let down = format!("{}s", REPLICA_DOWN_TIMEOUT.as_secs());
    let extra: Vec<&str> = match node_loss {
        true => vec!["--replica-down-timeout", &down],
        false => vec![],
    };
    let mut cluster = FaultCluster::start(
        &config.name,
        &config.work_dir,
        &config.storaged,
        config.nodes,
        &extra,
    )?;
    let sampler = crate::usage::Sampler::start(cluster.dir().to_string_lossy().into_owned())?;
    let block_volumes: Vec<String> = match block {
        true => (1..=config.volumes).map(|i| format!("chaos-{i}")).collect(),
        false => Vec::new(),
    };
    let mut volumes = block_volumes.clone();
    if fs {
        volumes.push(FS_VOLUME.to_string());
    }
    setup(&cluster, &volumes, config).await?;
    let recorder = Arc::new(Recorder::new());
    // Declared after the cluster, so dropped (unmounted, its loop device released) before it.
    let fs_volume = match fs {
        true => Some(attach_fs(&mut cluster).await?),
        false => None,
    };
    if config.lying_disks {
        for id in cluster.node_ids() {
            cluster.disk(id).lie_fsync(Some("*.log"));
        }
        tracing::warn!("every disk now ignores WAL fsyncs: this run is meant to lose writes");
    }
    let workload = BlockWorkload {
        volumes: block_volumes,
        blocks_per_volume: config.blocks_per_volume,
        clients_per_volume: config.clients_per_volume,
        seed: config.seed,
    };
    let security = cluster.procs.security_for(&Identity::Admin);
    let clients = workload.start(&cluster.procs.addrs(), &security, Arc::clone(&recorder))?;
    let writer = match &fs_volume {
        Some(v) => Some(v.start(Arc::clone(&recorder))?),
        None => None,
    };
    let faults = match config.overlap {
        1 => inject(&mut cluster, &recorder, &volumes, config).await,
        _ => crate::overlap::inject(&mut cluster, &recorder, &volumes, config).await,
    };
    clients.stop().await;
    let written = match writer {
        Some(w) => Some(w.stop().await?),
        None => None,
    };
    let faults = faults?;
    let healed = Instant::now();
    whole(&cluster, &volumes, config.recovery).await?;
    let recovery_s = healed.elapsed().as_secs_f64();
    let finals = workload
        .final_reads(&cluster.procs.client(), &recorder, config.recovery)
        .await;
    let (fs_counts, fs_acks) = match (fs_volume, written) {
        (Some(v), Some((acks, errors))) => (Some(v.finish(&acks, errors).await?), acks),
        _ => (None, Vec::new()),
    };
    let members = cluster.members(&volumes).await;
    let usage = sampler.stop();
    let history = recorder.ops();
    let final_reads = checker::check_final_reads(&history, &finals)?;
    let check = checker::check(&history, &checker::Config::default())?;
    let mut report = RunReport::new(config.seed, &history, &faults, &check, &final_reads);
    if let Some(counts) = fs_counts {
        report.add_fs(counts);
    }
    tracing::info!(seed = config.seed, ops = ?report.ops, faults = ?report.faults, lost = report.lost, violations = report.violations, "chaos run checked");
    if let Some(path) = &config.report {
        let json = serde_json::to_vec_pretty(&report).map_err(std::io::Error::from)?;
        std::fs::write(path, json)?;
        // The faults as they happened, with each node's heal and proven catch-up (`catch_up`):
        // what `audit` checks the budget from.
        let json = serde_json::to_vec_pretty(&faults).map_err(std::io::Error::from)?;
        std::fs::write(beside(path, ".faults.json"), json)?;
        if !report.clean() {
            keep_evidence(path, &cluster)?;
        }
    }
    if let Some(path) = &config.plot {
        let kinds: Vec<&str> = config.faults.iter().map(|k| k.name()).collect();
        let title = format!(
            "cairn-chaos seed {}, overlap {}: {} faults ({}), lost {}, violations {}",
            config.seed,
            config.overlap,
            faults.len(),
            kinds.join(","),
            report.lost,
            report.violations
        );
        std::fs::write(path, crate::plot::svg(&history, &fs_acks, &faults, &title))?;
    }
    if let Some(path) = &config.history {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        crate::history::write_jsonl(file, &history)?;
    }
    Ok(RunOutcome {
        report,
        faults,
        history,
        check,
        final_reads,
        recovery_s,
        fs_acks,
        members,
        usage,
    })
}

/// `report`'s path with `suffix` appended.
fn beside(report: &Path, suffix: &str) -> PathBuf {
    let mut name = report.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// After a failed verdict, beside the report at `report`: every node's storaged log
/// (`REPORT.node-N.log`), since the run's directory goes with the run. The faults as they
/// happened are always kept (`REPORT.faults.json`, times in ns since the run's start, as in
/// the history).
fn keep_evidence(report: &Path, cluster: &FaultCluster) -> Result<(), Error> {
    for id in cluster.node_ids() {
        std::fs::write(
            beside(report, &format!(".node-{id}.log")),
            cluster.procs.log_of(id),
        )?;
    }
    eprintln!(
        "the verdict failed: storaged logs and the fault log kept beside {}",
        report.display()
    );
    Ok(())
}

/// Attaches the fs workload's volume on `FS_NODE` through its NodeService (with that node's
/// CSI identity), formats and mounts it; from now on no fault takes that node down (a power
/// loss, a lost disk), though its storaged may be killed, paused or restarted.
async fn attach_fs(cluster: &mut FaultCluster) -> Result<FsVolume, Error> {
    let node = &cluster.procs.nodes[cluster.procs.index_of(FS_NODE)];
    let me = cluster
        .procs
        .security_for(&Identity::CsiNode(node.name.clone()));
    let api = cairn_client::NodeClient::connect(&node.addr, &me)
        .map_err(|s| Error::Config(s.message().into()))?;
    let mount = cluster.dir().join("fs-mount");
    let fs = FsVolume::attach(FS_VOLUME, FS_NODE, api, &node.run_dir(), mount).await?;
    cluster.protected.insert(FS_NODE);
    Ok(fs)
}

async fn setup(
    cluster: &FaultCluster,
    volumes: &[String],
    config: &RunConfig,
) -> Result<(), Error> {
    whole(cluster, &[], config.recovery).await?;
    let api = cluster.procs.client();
    for name in volumes {
        api.create_volume(pb::CreateVolumeRequest {
            name: name.clone(),
            size_bytes: match name.as_str() {
                FS_VOLUME => FS_VOLUME_SIZE,
                _ => volume_size(config.blocks_per_volume),
            },
            replicas: nemesis::REPLICAS as u32,
            ..Default::default()
        })
        .await
        .map_err(|s| Error::Cluster(format!("create volume {name}: {}", s.message())))?;
    }
    whole(cluster, volumes, config.recovery).await
}

/// Follows the schedule until the duration is up, one fault at a time, waiting for the cluster
/// to be whole after each; returns the faults as they happened.
async fn inject(
    cluster: &mut FaultCluster,
    recorder: &Recorder,
    volumes: &[String],
    config: &RunConfig,
) -> Result<Vec<FaultRecord>, Error> {
    let started = Instant::now();
    let mut log = Vec::new();
    let schedule = Schedule::new(
        config.seed,
        &config.faults,
        config.nodes,
        volumes,
        config.targets,
        config.pacing.clone(),
    );
    for step in schedule {
        let left = config.duration.saturating_sub(started.elapsed());
        if step.gap + step.hold > left {
            break;
        }
        tokio::time::sleep(step.gap).await;
        if !nemesis::possible(cluster, step.kind, &step.target) {
            tracing::info!(fault = step.kind.name(), target = ?step.target, lost = ?cluster.lost, "fault skipped: its node is lost or protected, or too few nodes are left");
            continue;
        }
        let nodes = nemesis::resolve(cluster, &step.target).await?;
        if !nemesis::spares(cluster, step.kind, &nodes) {
            tracing::info!(fault = step.kind.name(), target = ?step.target, ?nodes, "fault skipped: it would take down the node where the fs workload is attached");
            continue;
        }
        let mut fault =
            nemesis::start_on(cluster, recorder, step.kind, step.target, nodes, true).await?;
        nemesis::watch(cluster, &mut fault, volumes);
        tokio::time::sleep(step.hold).await;
        nemesis::observe(cluster, &mut fault, volumes).await;
        let mut record = nemesis::heal(cluster, recorder, fault)?;
        let healed = Instant::now();
        whole(cluster, volumes, config.recovery).await?;
        record.whole_after_s = healed.elapsed().as_secs_f64();
        if record.kind == FaultKind::NodeLoss {
            record.members_after = cluster.members(volumes).await;
        }
        log.push(record);
    }
    tokio::time::sleep(config.duration.saturating_sub(started.elapsed())).await;
    Ok(log)
}

/// Waits for a whole cluster; on a timeout the error carries the nodes' log tails.
async fn whole(cluster: &FaultCluster, volumes: &[String], within: Duration) -> Result<(), Error> {
    cluster
        .wait_healthy(volumes, within)
        .await
        .map_err(|e| Error::Cluster(format!("{e}\n{}", cluster.log_tails(30))))
}
