//! `cairnctl cluster` and `cairnctl node`: the meta leader and term, and node membership
//! (list, add, remove).

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

fn node_json(n: &pb::Node) -> serde_json::Value {
    json!({"id": n.id, "name": n.name, "addr": n.addr, "role": n.role, "reachable": n.reachable,
           "capacity_bytes": n.capacity_bytes, "allocated_bytes": n.allocated_bytes, "labels": n.labels})
}

fn print_nodes(out: Output, nodes: &[pb::Node]) {
    if out == Output::Json {
        print_json_array(nodes, node_json);
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
