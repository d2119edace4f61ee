//! NodeGetInfo of a node plugin started before its storaged (issue 20): within the caller's
//! deadline it waits, then answers with the node's zone once storaged lists the node.

mod common;

use std::time::{Duration, Instant};

use cairn_csi::params::{TOPOLOGY_NODE_KEY, TOPOLOGY_ZONE_KEY};
use cairn_proto::csi::v1 as csi;
use common::*;
use tonic::{Code, Request};

/// The kubelet's deadline for NodeGetInfo at registration (`csiTimeout`).
const KUBELET_TIMEOUT: Duration = Duration::from_secs(120);

fn with_deadline(deadline: Duration) -> Request<csi::NodeGetInfoRequest> {
    let mut r = Request::new(csi::NodeGetInfoRequest {});
    r.set_timeout(deadline);
    r
}

/// How many times the plugin has logged that NodeGetInfo waits for storaged.
fn waits_logged(p: &Plugin) -> usize {
    std::fs::read_to_string(&p.log)
        .unwrap_or_default()
        .matches("NodeGetInfo waits for storaged")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_get_info_waits_for_storaged_then_answers_with_the_zone() {
    let mut cluster = Cluster::plan(3, &[]);
    let plugin = Plugin::node_unready(&cluster, 0).await;
    let probe = plugin
        .identity()
        .await
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false), "no storaged runs yet");

    // A caller with a short deadline: DEADLINE_EXCEEDED from the plugin itself, before the
    // deadline (not the server's CANCELLED after it), saying what it waited for.
    let start = Instant::now();
    let short = Duration::from_secs(3);
    let e = plugin
        .node_rpc()
        .await
        .node_get_info(with_deadline(short))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        took < short,
        "answered after the caller's deadline: {took:?}"
    );
    assert!(took >= Duration::from_secs(2), "gave up early: {took:?}");
    assert!(
        e.message().contains("node-1") && e.message().contains("zone"),
        "{e:?}"
    );

    // The kubelet's call, made while storaged is still away, is answered once it comes up.
    let logged = waits_logged(&plugin);
    let mut rpc = plugin.node_rpc().await;
    let call = tokio::spawn(async move { rpc.node_get_info(with_deadline(KUBELET_TIMEOUT)).await });
    wait_for(
        "the plugin waiting for storaged",
        Duration::from_secs(30),
        || async { (waits_logged(&plugin) > logged).then_some(()) },
    )
    .await;
    assert!(!call.is_finished(), "NodeGetInfo answered without storaged");
    let launched = Instant::now();
    cluster.launch().await;
    let info = tokio::time::timeout(STARTUP, call)
        .await
        .expect("NodeGetInfo answered once storaged lists the node")
        .unwrap()
        .expect("NodeGetInfo")
        .into_inner();
    eprintln!(
        "NodeGetInfo answered {:?} after storaged was started",
        launched.elapsed()
    );
    assert_eq!(info.node_id, "node-1");
    let seg = info.accessible_topology.expect("topology").segments;
    assert_eq!(seg[TOPOLOGY_NODE_KEY], "node-1");
    assert_eq!(
        seg.get(TOPOLOGY_ZONE_KEY).map(String::as_str),
        Some("zone-a")
    );

    // Once storaged answers, NodeGetInfo does at once.
    let start = Instant::now();
    let again = plugin
        .node_rpc()
        .await
        .node_get_info(with_deadline(KUBELET_TIMEOUT))
        .await
        .expect("NodeGetInfo")
        .into_inner();
    assert_eq!(again.node_id, "node-1");
    assert_eq!(
        again.accessible_topology.unwrap().segments[TOPOLOGY_ZONE_KEY],
        "zone-a"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
