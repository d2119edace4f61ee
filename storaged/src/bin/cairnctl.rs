//! `cairnctl`: the operator CLI for a storaged cluster (cluster status, volumes,
//! raw volume I/O and node membership), with tables or `-o json`.

use std::io::{Read, Write};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use clap::{Parser, Subcommand};
use serde_json::json;
use tonic::{Code, Status};

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
    /// Output format: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table")]
    output: String,
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

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshots --volume now and waits until the copy is complete.
    Create {
        name: String,
        #[arg(long)]
        volume: String,
    },
    /// Lists snapshots (of one --volume if given).
    Ls {
        #[arg(long)]
        volume: Option<String>,
    },
    Rm {
        name: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Meta leader, term and nodes.
    Status,
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create {
        name: String,
        /// Size, e.g. 1GiB.
        #[arg(long)]
        size: String,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// `replicated` or `local`.
        #[arg(long, default_value = "replicated")]
        r#type: String,
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
    },
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
        file: Option<std::path::PathBuf>,
    },
    /// Reads --length bytes at --offset to stdout (or --file).
    Read {
        name: String,
        #[arg(long)]
        offset: u64,
        #[arg(long)]
        length: u64,
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    Ls,
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
        #[arg(long)]
        name: Option<String>,
    },
    Remove {
        #[arg(long)]
        id: u64,
    },
}

/// Exit codes: 0 ok, 1 other failure, 2 bad input, 3 not found, 4 conflict, 5 unavailable.
fn exit_code(s: &Status) -> i32 {
    match s.code() {
        Code::InvalidArgument | Code::OutOfRange => 2,
        Code::NotFound => 3,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => 4,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => 5,
        _ => 1,
    }
}

fn size(field: &str, s: &str) -> Result<u64, Status> {
    parse_size::parse_size(s).map_err(|e| Status::invalid_argument(format!("--{field} `{s}`: {e}")))
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
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
        "type": kind_name(v.kind), "health": v.health().word(), "leader_node_id": v.leader_node_id,
        "members": v.members.iter().map(|m| json!({"node_id": m.node_id, "node": m.node_name, "state": m.state().word(), "matched_index": m.matched_index})).collect::<Vec<_>>(),
        "attachments": v.attachments.iter().map(|a| json!({"node": a.node_name, "readonly": a.readonly})).collect::<Vec<_>>(),
        "source": v.source,
    })
}

fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    json!({"name": s.name, "volume": s.source_volume, "size_bytes": s.size_bytes,
           "ready": s.ready, "stored_bytes": s.stored_bytes, "created_unix": s.created_unix})
}

async fn snapshot_cmd(
    client: &VolumeClient,
    json_out: bool,
    cmd: SnapshotCmd,
) -> Result<(), Status> {
    match cmd {
        SnapshotCmd::Create { name, volume } => {
            let started = std::time::Instant::now();
            let s = loop {
                let s = client.create_snapshot(&name, &volume).await?;
                if s.ready {
                    break s;
                }
                eprintln!("copying snapshot/{name} … {}s", started.elapsed().as_secs());
            };
            if json_out {
                println!("{}", snapshot_json(&s));
            } else {
                println!(
                    "snapshot/{} of volume/{} ready ({} written of {})",
                    s.name,
                    s.source_volume,
                    human(s.stored_bytes),
                    human(s.size_bytes)
                );
            }
        }
        SnapshotCmd::Ls { volume } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_snapshots(pb::ListSnapshotsRequest {
                        page_size: 500,
                        page_token: token,
                        name: String::new(),
                        source_volume: volume.clone().unwrap_or_default(),
                    })
                    .await?;
                all.extend(page.snapshots);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if json_out {
                println!(
                    "{}",
                    serde_json::Value::Array(all.iter().map(snapshot_json).collect())
                );
            } else {
                println!(
                    "{:<40} {:<30} {:>10} {:>10} {:<6}",
                    "NAME", "VOLUME", "SIZE", "WRITTEN", "READY"
                );
                for s in all {
                    println!(
                        "{:<40} {:<30} {:>10} {:>10} {:<6}",
                        s.name,
                        s.source_volume,
                        human(s.size_bytes),
                        human(s.stored_bytes),
                        s.ready
                    );
                }
            }
        }
        SnapshotCmd::Rm { name } => {
            client.delete_snapshot(&name).await?;
            if json_out {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("snapshot/{name} deleted");
            }
        }
    }
    Ok(())
}

fn node_json(n: &pb::Node) -> serde_json::Value {
    json!({"id": n.id, "name": n.name, "addr": n.addr, "role": n.role, "reachable": n.reachable,
           "capacity_bytes": n.capacity_bytes, "allocated_bytes": n.allocated_bytes, "labels": n.labels})
}

fn print_nodes(json_out: bool, nodes: &[pb::Node]) {
    if json_out {
        println!(
            "{}",
            serde_json::Value::Array(nodes.iter().map(node_json).collect())
        );
        return;
    }
    println!(
        "{:<4} {:<12} {:<22} {:<8} {:<9} {:>10} {:>10}",
        "ID", "NAME", "ADDR", "ROLE", "REACHABLE", "CAPACITY", "ALLOCATED"
    );
    for n in nodes {
        println!(
            "{:<4} {:<12} {:<22} {:<8} {:<9} {:>10} {:>10}",
            n.id,
            n.name,
            n.addr,
            n.role,
            n.reachable,
            human(n.capacity_bytes),
            human(n.allocated_bytes)
        );
    }
}

async fn run(cli: Cli) -> Result<(), Status> {
    let client = VolumeClient::new(cli.endpoint.clone())?;
    let json_out = match cli.output.as_str() {
        "json" => true,
        "table" => false,
        other => {
            return Err(Status::invalid_argument(format!(
                "--output `{other}`: use table or json"
            )));
        }
    };
    match cli.cmd {
        Cmd::Cluster {
            cmd: ClusterCmd::Status,
        } => {
            let s = client.cluster_status().await?;
            if json_out {
                println!(
                    "{}",
                    json!({"meta_leader_id": s.meta_leader_id, "term": s.term, "commit_index": s.commit_index,
                    "volume_count": s.volume_count, "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>()})
                );
            } else {
                println!(
                    "meta leader: {}  term: {}  applied: {}  volumes: {}",
                    s.meta_leader_id, s.term, s.commit_index, s.volume_count
                );
                print_nodes(false, &s.nodes);
            }
        }
        Cmd::Volume { cmd } => match cmd {
            VolumeCmd::Create {
                name,
                size: sz,
                replicas,
                r#type,
                node,
                zone,
                from_snapshot,
                from_volume,
            } => {
                let kind = match r#type.as_str() {
                    "replicated" => pb::VolumeKind::Replicated,
                    "local" => pb::VolumeKind::Local,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "--type `{other}`: use replicated or local"
                        )));
                    }
                };
                let mut segments = std::collections::HashMap::new();
                if let Some(n) = node {
                    segments.insert("topology.cairn.dev/node".to_string(), n);
                }
                if let Some(z) = zone {
                    segments.insert("topology.kubernetes.io/zone".to_string(), z);
                }
                let requisite = if segments.is_empty() {
                    vec![]
                } else {
                    vec![pb::TopologyTerm { segments }]
                };
                let req = pb::CreateVolumeRequest {
                    name,
                    size_bytes: size("size", &sz)?,
                    replicas: if kind == pb::VolumeKind::Local {
                        1
                    } else {
                        replicas
                    },
                    kind: kind as i32,
                    requisite,
                    source_snapshot: from_snapshot.unwrap_or_default(),
                    source_volume: from_volume.unwrap_or_default(),
                    ..Default::default()
                };
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
                if json_out {
                    println!("{}", volume_json(&v))
                } else {
                    println!(
                        "volume/{} created ({}, {} replicas)",
                        v.name,
                        human(v.size_bytes),
                        v.replicas
                    )
                }
            }
            VolumeCmd::Ls => {
                let vols = client.list_all_volumes().await?;
                if json_out {
                    println!(
                        "{}",
                        serde_json::Value::Array(vols.iter().map(volume_json).collect())
                    );
                } else {
                    println!(
                        "{:<40} {:>10} {:>8} {:<10} {:<20}",
                        "NAME", "SIZE", "REPLICAS", "TYPE", "NODES"
                    );
                    for v in vols {
                        let nodes: Vec<String> =
                            v.members.iter().map(|m| m.node_name.clone()).collect();
                        println!(
                            "{:<40} {:>10} {:>8} {:<10} {:<20}",
                            v.name,
                            human(v.size_bytes),
                            v.replicas,
                            kind_name(v.kind),
                            nodes.join(",")
                        );
                    }
                }
            }
            VolumeCmd::Get { name } => {
                let v = client.get_volume(&name).await?;
                if json_out {
                    println!("{}", volume_json(&v));
                } else {
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
                    if !v.source.is_empty() {
                        println!("source: {}", v.source);
                    }
                    for m in &v.members {
                        println!(
                            "  replica node {} ({}): {} matched={}",
                            m.node_id,
                            m.node_name,
                            m.state().word(),
                            m.matched_index
                        );
                    }
                    for a in &v.attachments {
                        println!("  attached to {} readonly={}", a.node_name, a.readonly);
                    }
                }
            }
            VolumeCmd::Rm { name } => {
                client.delete_volume(&name).await?;
                if json_out {
                    println!("{}", json!({"deleted": name}))
                } else {
                    println!("volume/{name} deleted")
                }
            }
            VolumeCmd::Resize { name, size: sz } => {
                let v = client.resize_volume(&name, size("size", &sz)?).await?;
                if json_out {
                    println!("{}", volume_json(&v))
                } else {
                    println!("volume/{} resized to {}", v.name, human(v.size_bytes))
                }
            }
            VolumeCmd::Write { name, offset, file } => {
                let mut data = Vec::new();
                match file {
                    Some(f) => {
                        data = std::fs::read(&f).map_err(|e| {
                            Status::invalid_argument(format!("--file {}: {e}", f.display()))
                        })?
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
                            &name,
                            offset + (i * chunk) as u64,
                            bytes::Bytes::copy_from_slice(part),
                        )
                        .await?;
                }
                if json_out {
                    println!("{}", json!({"written": data.len()}))
                } else {
                    eprintln!("wrote {} bytes at offset {offset}", data.len())
                }
            }
            VolumeCmd::Read {
                name,
                offset,
                length,
                file,
            } => {
                let mut out: Box<dyn Write> = match &file {
                    Some(f) => Box::new(std::fs::File::create(f).map_err(|e| {
                        Status::invalid_argument(format!("--file {}: {e}", f.display()))
                    })?),
                    None => Box::new(std::io::stdout().lock()),
                };
                let mut pos = 0u64;
                while pos < length {
                    let n = (length - pos).min(1 << 20) as u32;
                    let data = client.read(&name, offset + pos, n).await?;
                    out.write_all(&data)
                        .map_err(|e| Status::internal(format!("output: {e}")))?;
                    pos += n as u64;
                }
                out.flush()
                    .map_err(|e| Status::internal(format!("output: {e}")))?;
            }
        },
        Cmd::Snapshot { cmd } => snapshot_cmd(&client, json_out, cmd).await?,
        Cmd::Node { cmd } => match cmd {
            NodeCmd::Ls => print_nodes(json_out, &client.list_nodes().await?),
            NodeCmd::Add { id, addr, name } => {
                let n = client
                    .add_node(pb::AddNodeRequest {
                        id,
                        addr,
                        name: name.unwrap_or_default(),
                        ..Default::default()
                    })
                    .await?;
                if json_out {
                    println!("{}", node_json(&n))
                } else {
                    println!("node/{} ({}) added as {}", n.id, n.name, n.role)
                }
            }
            NodeCmd::Remove { id } => {
                client.remove_node(id).await?;
                if json_out {
                    println!("{}", json!({"removed": id}))
                } else {
                    println!("node/{id} removed")
                }
            }
        },
    }
    Ok(())
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
