//! `cairnctl cluster` and `cairnctl node`: the meta leader and term, and node membership
//! (list, add, remove) and scheduling (cordon, uncordon, drain).

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use clap::Subcommand;
use serde_json::json;
use tonic::Status;

use crate::output::{Output, human, print_json_array};

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Meta leader, term and nodes.
    Status,
}

#[derive(Subcommand)]
pub enum NodeCmd {
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
    /// No new replicas on this node.
    Cordon {
        name: String,
    },
    /// Undoes a cordon (and ends a drain).
    Uncordon {
        name: String,
    },
    /// Cordons the node and moves every replica off it (then `node remove` succeeds).
    Drain {
        name: String,
        /// Wait until no replica is left on the node, at most this many seconds (0: don't).
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

pub async fn cluster(client: &VolumeClient, out: Output, cmd: ClusterCmd) -> Result<(), Status> {
    match cmd {
        ClusterCmd::Status => status(client, out).await,
    }
}

pub async fn node(client: &VolumeClient, out: Output, cmd: NodeCmd) -> Result<(), Status> {
    match cmd {
        NodeCmd::Ls => {
            print_nodes(out, &client.list_nodes().await?);
            Ok(())
        }
        NodeCmd::Add { id, addr, name } => add(client, out, id, addr, name).await,
        NodeCmd::Remove { id } => remove(client, out, id).await,
        NodeCmd::Cordon { name } => cordon(client, out, &name, true).await,
        NodeCmd::Uncordon { name } => cordon(client, out, &name, false).await,
        NodeCmd::Drain { name, wait } => drain(client, out, &name, wait).await,
    }
}

async fn status(client: &VolumeClient, out: Output) -> Result<(), Status> {
    let s = client.cluster_status().await?;
    match out {
        Output::Json => println!(
            "{}",
            json!({"meta_leader_id": s.meta_leader_id, "term": s.term, "commit_index": s.commit_index,
            "volume_count": s.volume_count, "nodes": s.nodes.iter().map(node_json).collect::<Vec<_>>()})
        ),
        Output::Table => {
            println!(
                "meta leader: {}  term: {}  applied: {}  volumes: {}",
                s.meta_leader_id, s.term, s.commit_index, s.volume_count
            );
            print_nodes(Output::Table, &s.nodes);
        }
    }
    Ok(())
}

async fn add(
    client: &VolumeClient,
    out: Output,
    id: u64,
    addr: String,
    name: Option<String>,
) -> Result<(), Status> {
    let n = client
        .add_node(pb::AddNodeRequest {
            id,
            addr,
            name: name.unwrap_or_default(),
            ..Default::default()
        })
        .await?;
    out.print(
        node_json(&n),
        format_args!("node/{} ({}) added as {}", n.id, n.name, n.role),
    );
    Ok(())
}

async fn remove(client: &VolumeClient, out: Output, id: u64) -> Result<(), Status> {
    client.remove_node(id).await?;
    out.print(json!({"removed": id}), format_args!("node/{id} removed"));
    Ok(())
}

async fn cordon(client: &VolumeClient, out: Output, name: &str, on: bool) -> Result<(), Status> {
    let n = client.cordon_node(name, on).await?;
    let what = if on { "cordoned" } else { "uncordoned" };
    out.print(node_json(&n), format_args!("node/{name} {what}"));
    Ok(())
}

/// Replicas of replicated volumes still on node `id`.
async fn replicas_on(client: &VolumeClient, id: u64) -> Result<usize, Status> {
    let vols = client.list_all_volumes().await?;
    Ok(vols
        .iter()
        .filter(|v| v.members.iter().any(|m| m.node_id == id))
        .count())
}

async fn drain(client: &VolumeClient, out: Output, name: &str, wait: u64) -> Result<(), Status> {
    let r = client.drain_node(name).await?;
    let n = r.node.unwrap_or_default();
    if wait == 0 {
        out.print(
            json!({"node": node_json(&n), "replicas_to_move": r.replicas_to_move}),
            format_args!(
                "node/{name} draining: {} replicas to move",
                r.replicas_to_move
            ),
        );
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let left = replicas_on(client, n.id).await?;
        if left == 0 {
            out.print(
                json!({"node": node_json(&n), "replicas_to_move": 0}),
                format_args!("node/{name} drained"),
            );
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "node/{name}: {left} replicas still to move after {wait}s"
            )));
        }
        eprintln!("node/{name} draining: {left} replicas to move");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn node_json(n: &pb::Node) -> serde_json::Value {
    json!({"id": n.id, "name": n.name, "addr": n.addr, "role": n.role, "reachable": n.reachable,
           "cordoned": n.cordoned, "draining": n.draining,
           "capacity_bytes": n.capacity_bytes, "allocated_bytes": n.allocated_bytes,
           "used_bytes": n.used_bytes, "overcommit": n.overcommit, "labels": n.labels})
}

fn print_nodes(out: Output, nodes: &[pb::Node]) {
    if out == Output::Json {
        print_json_array(nodes, node_json);
        return;
    }
    println!(
        "{:<4} {:<12} {:<22} {:<8} {:<9} {:<11} {:>10} {:>10} {:>10}",
        "ID", "NAME", "ADDR", "ROLE", "REACHABLE", "SCHEDULE", "CAPACITY", "ALLOCATED", "USED"
    );
    for n in nodes {
        let schedule = match (n.draining, n.cordoned) {
            (true, _) => "draining",
            (false, true) => "cordoned",
            _ => "ready",
        };
        // Capacity with its overcommit when there is one, e.g. `10GiB×2`.
        let capacity = if n.overcommit > 1.0 {
            format!("{}×{}", human(n.capacity_bytes), n.overcommit)
        } else {
            human(n.capacity_bytes)
        };
        // No fresh report (an older node, or one not heard from): `-`.
        let used = if n.used_bytes > 0 {
            human(n.used_bytes)
        } else {
            "-".to_string()
        };
        println!(
            "{:<4} {:<12} {:<22} {:<8} {:<9} {:<11} {:>10} {:>10} {:>10}",
            n.id,
            n.name,
            n.addr,
            n.role,
            n.reachable,
            schedule,
            capacity,
            human(n.allocated_bytes),
            used
        );
    }
}
