//! `cairnctl volume`: create (empty, or a copy of a snapshot or volume), list, get, remove,
//! resize, and raw writes and reads of a volume's bytes.

use std::io::{Read, Write};
use std::path::PathBuf;

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use tonic::{Code, Status};

use crate::output::{Output, human, print_json_array};

#[derive(Subcommand)]
pub enum VolumeCmd {
    Create(CreateArgs),
    Ls,
    Get {
        name: String,
    },
    Rm {
        name: String,
    },
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Writes stdin (or --file) at --offset.
    Write {
        name: String,
        #[arg(long)]
        offset: u64,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Reads --length bytes at --offset to stdout (or --file).
    Read {
        name: String,
        #[arg(long)]
        offset: u64,
        #[arg(long)]
        length: u64,
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// Size, e.g. 1GiB.
    #[arg(long)]
    size: String,
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Volume type.
    #[arg(long, value_enum, default_value_t = Kind::Replicated)]
    r#type: Kind,
    /// Required node name.
    #[arg(long)]
    node: Option<String>,
    /// Required zone.
    #[arg(long)]
    zone: Option<String>,
    /// Start as a copy of this snapshot.
    #[arg(long, conflicts_with = "from_volume")]
    from_snapshot: Option<String>,
    /// Start as a copy of this volume as it is now.
    #[arg(long)]
    from_volume: Option<String>,
}

/// The `--type` of a new volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Replicated,
    Local,
}

pub async fn run(client: &VolumeClient, out: Output, cmd: VolumeCmd) -> Result<(), Status> {
    match cmd {
        VolumeCmd::Create(args) => create(client, out, args).await,
        VolumeCmd::Ls => ls(client, out).await,
        VolumeCmd::Get { name } => get(client, out, &name).await,
        VolumeCmd::Rm { name } => rm(client, out, name).await,
        VolumeCmd::Resize { name, size: sz } => resize(client, out, &name, &sz).await,
        VolumeCmd::Write { name, offset, file } => write(client, out, &name, offset, file).await,
        VolumeCmd::Read {
            name,
            offset,
            length,
            file,
        } => read(client, &name, offset, length, file).await,
    }
}

fn size(field: &str, s: &str) -> Result<u64, Status> {
    parse_size::parse_size(s).map_err(|e| Status::invalid_argument(format!("--{field} `{s}`: {e}")))
}

fn kind_name(k: i32) -> &'static str {
    if k == pb::VolumeKind::Local as i32 {
        "local"
    } else {
        "replicated"
    }
}

fn volume_json(v: &pb::Volume) -> serde_json::Value {
    json!({
        "id": v.id, "name": v.name, "size_bytes": v.size_bytes, "replicas": v.replicas,
        "type": kind_name(v.kind), "health": v.health().word(), "health_reason": v.health_reason, "zone_warning": v.zone_warning, "leader_node_id": v.leader_node_id,
        "members": v.members.iter().map(|m| json!({"node_id": m.node_id, "node": m.node_name, "state": m.state().word(), "reason": m.reason, "matched_index": m.matched_index, "target_index": m.target_index, "rebuild": m.rebuild.as_ref().map(|r| json!({"copied_bytes": r.copied_bytes, "total_bytes": r.total_bytes, "percent": r.percent, "eta_seconds": r.eta_seconds}))})).collect::<Vec<_>>(),
        "attachments": v.attachments.iter().map(|a| json!({"node": a.node_name, "readonly": a.readonly})).collect::<Vec<_>>(),
        "source": v.source,
    })
}

/// The CreateVolume request for `args` (a local volume has one replica).
fn create_request(a: CreateArgs) -> Result<pb::CreateVolumeRequest, Status> {
    let kind = match a.r#type {
        Kind::Replicated => pb::VolumeKind::Replicated,
        Kind::Local => pb::VolumeKind::Local,
    };
    let mut segments = std::collections::HashMap::new();
    if let Some(n) = a.node {
        segments.insert("topology.cairn.dev/node".to_string(), n);
    }
    if let Some(z) = a.zone {
        segments.insert("topology.kubernetes.io/zone".to_string(), z);
    }
    let requisite = if segments.is_empty() {
        vec![]
    } else {
        vec![pb::TopologyTerm { segments }]
    };
    Ok(pb::CreateVolumeRequest {
        name: a.name,
        size_bytes: size("size", &a.size)?,
        replicas: if kind == pb::VolumeKind::Local {
            1
        } else {
            a.replicas
        },
        kind: kind as i32,
        requisite,
        source_snapshot: a.from_snapshot.unwrap_or_default(),
        source_volume: a.from_volume.unwrap_or_default(),
        ..Default::default()
    })
}

async fn create(client: &VolumeClient, out: Output, args: CreateArgs) -> Result<(), Status> {
    let req = create_request(args)?;
    // A copy from a source answers ABORTED while it goes on: ask again.
    let started = std::time::Instant::now();
    let v = loop {
        match client.create_volume(req.clone()).await {
            Err(e) if e.code() == Code::Aborted => eprintln!(
                "copying into volume/{} … {}s",
                req.name,
                started.elapsed().as_secs()
            ),
            other => break other?,
        }
    };
    out.print(
        volume_json(&v),
        format_args!(
            "volume/{} created ({}, {} replicas)",
            v.name,
            human(v.size_bytes),
            v.replicas
        ),
    );
    Ok(())
}

async fn ls(client: &VolumeClient, out: Output) -> Result<(), Status> {
    let vols = client.list_all_volumes().await?;
    if out == Output::Json {
        print_json_array(&vols, volume_json);
        return Ok(());
    }
    println!(
        "{:<40} {:>10} {:>8} {:<10} {:<11} {:<20}",
        "NAME", "SIZE", "REPLICAS", "TYPE", "HEALTH", "NODES"
    );
    for v in vols {
        let nodes: Vec<String> = v.members.iter().map(|m| m.node_name.clone()).collect();
        println!(
            "{:<40} {:>10} {:>8} {:<10} {:<11} {:<20}",
            v.name,
            human(v.size_bytes),
            v.replicas,
            kind_name(v.kind),
            v.health().word(),
            nodes.join(",")
        );
    }
    Ok(())
}

/// A time left such as `45s`, `3m05s` or `2h10m`.
fn eta(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

async fn get(client: &VolumeClient, out: Output, name: &str) -> Result<(), Status> {
    let v = client.get_volume(name).await?;
    if out == Output::Json {
        println!("{}", volume_json(&v));
        return Ok(());
    }
    println!(
        "name: {}\nid: {}\nsize: {} ({} bytes)\ntype: {}\nreplicas: {}\nhealth: {}\nleader: {}",
        v.name,
        v.id,
        human(v.size_bytes),
        v.size_bytes,
        kind_name(v.kind),
        v.replicas,
        v.health().word(),
        v.leader_node_id
    );
    if !v.health_reason.is_empty() {
        println!("health reason: {}", v.health_reason);
    }
    if !v.zone_warning.is_empty() {
        println!("zones: {}", v.zone_warning);
    }
    if !v.source.is_empty() {
        println!("source: {}", v.source);
    }
    for m in &v.members {
        let progress = if let Some(r) = &m.rebuild {
            format!(
                " copied {} of {} ({}%), ETA {}",
                human(r.copied_bytes),
                human(r.total_bytes),
                r.percent,
                eta(r.eta_seconds)
            )
        } else if m.state() == pb::ReplicaState::Rebuilding && m.target_index > 0 {
            format!(
                " of {} ({}%)",
                m.target_index,
                (m.matched_index.min(m.target_index) * 100) / m.target_index
            )
        } else if !m.reason.is_empty() {
            format!(" ({})", m.reason)
        } else {
            String::new()
        };
        println!(
            "  replica node {} ({}): {} matched={}{progress}",
            m.node_id,
            m.node_name,
            m.state().word(),
            m.matched_index
        );
    }
    for a in &v.attachments {
        println!("  attached to {} readonly={}", a.node_name, a.readonly);
    }
    Ok(())
}

async fn rm(client: &VolumeClient, out: Output, name: String) -> Result<(), Status> {
    client.delete_volume(&name).await?;
    out.print(
        json!({"deleted": name}),
        format_args!("volume/{name} deleted"),
    );
    Ok(())
}

async fn resize(client: &VolumeClient, out: Output, name: &str, sz: &str) -> Result<(), Status> {
    let v = client.resize_volume(name, size("size", sz)?).await?;
    out.print(
        volume_json(&v),
        format_args!("volume/{} resized to {}", v.name, human(v.size_bytes)),
    );
    Ok(())
}

/// Writes `file` (or stdin) at `offset`, 1 MiB per request.
async fn write(
    client: &VolumeClient,
    out: Output,
    name: &str,
    offset: u64,
    file: Option<PathBuf>,
) -> Result<(), Status> {
    let mut data = Vec::new();
    match file {
        Some(f) => {
            data = std::fs::read(&f)
                .map_err(|e| Status::invalid_argument(format!("--file {}: {e}", f.display())))?
        }
        None => {
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| Status::internal(format!("stdin: {e}")))?;
        }
    }
    let chunk = 1 << 20;
    for (i, part) in data.chunks(chunk).enumerate() {
        client
            .write(
                name,
                offset + (i * chunk) as u64,
                bytes::Bytes::copy_from_slice(part),
            )
            .await?;
    }
    match out {
        Output::Json => println!("{}", json!({"written": data.len()})),
        Output::Table => eprintln!("wrote {} bytes at offset {offset}", data.len()),
    }
    Ok(())
}

/// Reads `length` bytes at `offset` to `file` (or stdout), 1 MiB per request.
async fn read(
    client: &VolumeClient,
    name: &str,
    offset: u64,
    length: u64,
    file: Option<PathBuf>,
) -> Result<(), Status> {
    let mut out: Box<dyn Write> = match &file {
        Some(f) => Box::new(
            std::fs::File::create(f)
                .map_err(|e| Status::invalid_argument(format!("--file {}: {e}", f.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut pos = 0u64;
    while pos < length {
        let n = (length - pos).min(1 << 20) as u32;
        let data = client.read(name, offset + pos, n).await?;
        out.write_all(&data)
            .map_err(|e| Status::internal(format!("output: {e}")))?;
        pos += n as u64;
    }
    out.flush()
        .map_err(|e| Status::internal(format!("output: {e}")))
}
