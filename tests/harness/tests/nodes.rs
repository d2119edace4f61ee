//! Harness nodes are namespaces: each node's own address (InternalIP, hostNetwork pods bind
//! it and reach each other over the bridge), hostname and host paths; teardown leaves nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_harness::cluster::kubelet_root;
use cairn_harness::node::Nodes;
use cairn_harness::resources;
use common::*;

fn server_pod(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: srv-{node}
spec:
  nodeName: {node}
  hostNetwork: true
  containers:
  - name: main
    image: busybox
    command:
    - sh
    - -c
    - |
      touch /kl/hello-$NODE
      exec python3 -c "
      import http.server, os
      class H(http.server.BaseHTTPRequestHandler):
          def do_GET(self):
              self.send_response(200); self.end_headers(); self.wfile.write(os.environ['NODE'].encode())
      http.server.HTTPServer((os.environ['IP'], 8080), H).serve_forever()"
    env:
    - name: NODE
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    - name: IP
      valueFrom: {{fieldRef: {{fieldPath: status.hostIP}}}}
    volumeMounts:
    - name: kl
      mountPath: /kl
  volumes:
  - name: kl
    hostPath: {{path: /var/lib/kubelet, type: Directory}}
"#
    )
}

fn get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split("\r\n\r\n").nth(1).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_have_their_own_address_hostname_and_paths() {
    let t = TestCluster::start(2).await;
    let data = t.dir.path().join("data");
    let m = t.c().machines.as_ref().expect("nodes have namespaces");
    let index = m.network.index;
    let addrs: Vec<String> = m.nodes.iter().map(|n| n.address.to_string()).collect();
    assert_ne!(addrs[0], addrs[1]);
    for (i, node) in ["node-1", "node-2"].iter().enumerate() {
        let obj = eventually(
            &format!("{node} registered"),
            Duration::from_secs(10),
            || async { t.c().registry.get(&resources::NODES, None, node).ok() },
        )
        .await;
        let internal: Vec<&str> = obj["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str())
            .collect();
        assert_eq!(internal, vec![addrs[i].as_str()], "{node} InternalIP");
        let holder = m.nodes[i].namespaces();
        let uts = format!("--uts={}", holder.proc("ns/uts").display());
        let out = std::process::Command::new("nsenter")
            .args([uts.as_str(), "hostname"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), *node);
        t.kubectl_stdin(&["apply", "-f", "-"], &server_pod(node))
            .await;
    }
    // Each server bound its node's address (the bind fails on any other); the host reaches
    // both over the bridge.
    for (i, node) in ["node-1", "node-2"].iter().enumerate() {
        let addr = format!("{}:8080", addrs[i]);
        let body = eventually(
            &format!("srv-{node} answers at {addr}"),
            Duration::from_secs(30),
            || async { get(&addr) },
        )
        .await;
        assert_eq!(body, *node);
    }
    // node-2's pod reaches node-1's server from node-2's network namespace.
    let fetch = format!(
        "import urllib.request; print(urllib.request.urlopen('http://{}:8080').read().decode())",
        addrs[0]
    );
    let out = t
        .must(&["exec", "srv-node-2", "--", "python3", "-c", &fetch])
        .await;
    assert_eq!(out.trim(), "node-1");
    let net = t
        .must(&["exec", "srv-node-2", "--", "readlink", "/proc/self/ns/net"])
        .await;
    assert_eq!(
        Some(net.trim().to_string()),
        m.nodes[1].namespaces().net_id()
    );
    assert_ne!(
        net.trim(),
        std::fs::read_link("/proc/self/ns/net")
            .unwrap()
            .to_string_lossy()
    );
    // hostPath /var/lib/kubelet is each node's own kubelet directory, not the host's.
    for (node, other) in [("node-1", "node-2"), ("node-2", "node-1")] {
        let mark = format!("hello-{node}");
        assert!(kubelet_root(&data, node).join(&mark).exists(), "{mark}");
        assert!(!kubelet_root(&data, other).join(&mark).exists());
        assert!(!Path::new("/var/lib/kubelet").join(&mark).exists());
    }
    shutdown_leaves_nothing(t, &data, index).await;
}

/// A scratch data directory (removed on drop) for two nodes, and their names.
fn two_nodes() -> (tempfile::TempDir, std::path::PathBuf, Vec<String>) {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-harness-test")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("data");
    (tmp, data, vec!["node-1".to_string(), "node-2".to_string()])
}

/// A harness that dies leaves its nodes running; the next start on the same data directory
/// removes them and starts cleanly, on the same subnet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_harness_leaves_nothing_in_the_way() {
    let (_tmp, data, names) = two_nodes();
    let crashed = Nodes::start(&data, &names).expect("nodes");
    let index = crashed.network.index;
    std::mem::forget(crashed);
    assert!(!leftovers(&data, index).is_empty());
    let mut again = Nodes::start(&data, &names).expect("nodes over leftovers");
    assert_eq!(
        again.network.index, index,
        "the data directory keeps its subnet"
    );
    again.shutdown();
    let left = leftovers(&data, index);
    assert!(left.is_empty(), "left after teardown: {left:#?}");
}

/// Starting and stopping nodes changes no mount of the host. A network namespace the host
/// made (`ip netns add`: an nsfs mount under `/run/netns`, which `ip` makes shared) lies under
/// `/run`, which each node covers with its own; the node detaches its copies of such mounts,
/// and a copy that stayed a peer of the host's took the host's mount with it (a chaos run's
/// storaged then failed to enter its namespace: setns EINVAL).
#[test]
fn nodes_leave_the_hosts_mounts_alone() {
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let probe = Netns(format!("cairn-probe-{}", std::process::id()));
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("run ip")
            .success()
    };
    assert!(ip(&["netns", "add", &probe.0]));
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&format!("/run/netns/{}", probe.0)))
    };
    assert!(mounted(), "ip netns add mounted nothing");
    let (_tmp, data, names) = two_nodes();
    let mut nodes = Nodes::start(&data, &names).expect("nodes");
    let during = mounted();
    let usable = ip(&["netns", "exec", &probe.0, "true"]);
    nodes.shutdown();
    assert!(
        during,
        "starting nodes unmounted the host's /run/netns/{}",
        probe.0
    );
    assert!(usable, "the host's namespace {} cannot be entered", probe.0);
    assert!(mounted(), "stopping nodes unmounted /run/netns/{}", probe.0);
}
