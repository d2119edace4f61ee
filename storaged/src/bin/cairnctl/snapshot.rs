//! `cairnctl snapshot`: point-in-time snapshots of replicated volumes (create and wait
//! until the copy is complete, list, remove).

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use clap::Subcommand;
use serde_json::json;
use tonic::Status;

use crate::output::{Output, human, print_json_array};

#[derive(Subcommand)]
pub enum SnapshotCmd {
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

pub async fn run(client: &VolumeClient, out: Output, cmd: SnapshotCmd) -> Result<(), Status> {
    match cmd {
        SnapshotCmd::Create { name, volume } => create(client, out, &name, &volume).await,
        SnapshotCmd::Ls { volume } => ls(client, out, volume).await,
        SnapshotCmd::Rm { name } => rm(client, out, name).await,
    }
}

async fn create(
    client: &VolumeClient,
    out: Output,
    name: &str,
    volume: &str,
) -> Result<(), Status> {
    let started = std::time::Instant::now();
    let s = loop {
        let s = client.create_snapshot(name, volume).await?;
        if s.ready {
            break s;
        }
        eprintln!("copying snapshot/{name} … {}s", started.elapsed().as_secs());
    };
    out.print(
        snapshot_json(&s),
        format_args!(
            "snapshot/{} of volume/{} ready ({} written of {})",
            s.name,
            s.source_volume,
            human(s.stored_bytes),
            human(s.size_bytes)
        ),
    );
    Ok(())
}

async fn ls(client: &VolumeClient, out: Output, volume: Option<String>) -> Result<(), Status> {
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
    if out == Output::Json {
        print_json_array(&all, snapshot_json);
        return Ok(());
    }
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
    Ok(())
}

async fn rm(client: &VolumeClient, out: Output, name: String) -> Result<(), Status> {
    client.delete_snapshot(&name).await?;
    out.print(
        json!({"deleted": name}),
        format_args!("snapshot/{name} deleted"),
    );
    Ok(())
}

fn snapshot_json(s: &pb::Snapshot) -> serde_json::Value {
    json!({"name": s.name, "volume": s.source_volume, "size_bytes": s.size_bytes,
           "ready": s.ready, "stored_bytes": s.stored_bytes, "created_unix": s.created_unix})
}
