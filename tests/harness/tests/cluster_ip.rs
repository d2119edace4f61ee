//! ClusterIP Services end to end: an address from the service range, reached by name and by
//! address from a pod on each node through the nodes' service proxy, refused without endpoints.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const SERVICE_RANGE: (u32, u32) = (0x0A60_0000, 0x0A70_0000); // 10.96.0.0/12

/// A Deployment of 2 replicas answering their pod name on 8080 (SO_REUSEPORT: pods share
/// their node's network, so two on one node still both listen), and a Service in front.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 2
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo}
    spec:
      containers:
      - name: main
        image: busybox
        command:
        - python3
        - -c
        - |
          import http.server, os, socket
          class H(http.server.BaseHTTPRequestHandler):
              def do_GET(self):
                  self.send_response(200); self.end_headers(); self.wfile.write(os.environ['POD'].encode())
          class S(http.server.HTTPServer):
              def server_bind(self):
                  self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                  super().server_bind()
          S(('', 8080), H).serve_forever()
        env:
        - name: POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
"#;

/// Fetches each URL (retrying, bounded; HTTPS checked against the pod's service-account CA)
/// and prints its answer, then fetches the last one 40 times and prints every answer seen;
/// or, with `--refused`, waits for a refused connection.
const CLIENT: &str = r#"
import os, ssl, sys, time, urllib.request
ca = '/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'
ctx = ssl.create_default_context(cafile=ca) if os.path.exists(ca) else None
def get(u):
    return urllib.request.urlopen(u, timeout=2, context=ctx).read().decode()
deadline = time.time() + 60
if sys.argv[1] == '--refused':
    while True:
        try:
            get(sys.argv[2])
        except Exception as e:
            if isinstance(getattr(e, 'reason', e), ConnectionRefusedError):
                print('REFUSED', sys.argv[2], flush=True); sys.exit(0)
        if time.time() > deadline:
            print('NOT REFUSED', flush=True); sys.exit(1)
        time.sleep(0.2)
for u in sys.argv[1:]:
    while True:
        try:
            print('ANSWER', u, get(u).replace('\n', ' '), flush=True)
            break
        except Exception as e:
            if time.time() > deadline:
                print('FAILED', u, repr(e), flush=True); sys.exit(1)
            time.sleep(0.2)
seen = {get(sys.argv[-1]) for _ in range(40)}
print('SEEN', ' '.join(sorted(seen)), flush=True)
"#;

fn client_pod(name: &str, node: &str, args: &[&str]) -> String {
    let mut command = vec!["python3", "-c", CLIENT];
    command.extend_from_slice(args);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": command}]}
    })
    .to_string()
}

/// Runs a client pod to completion; its log.
async fn run_client(t: &TestCluster, name: &str, node: &str, args: &[&str]) -> String {
    t.must_stdin(&["apply", "-f", "-"], &client_pod(name, node, args))
        .await;
    let phase = eventually(
        &format!("{name} finished"),
        Duration::from_secs(90),
        || async {
            let p = t
                .must(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
                .await;
            matches!(p.as_str(), "Succeeded" | "Failed").then_some(p)
        },
    )
    .await;
    let log = t.must(&["logs", name]).await;
    assert_eq!(phase, "Succeeded", "{name} on {node}: {log}");
    log
}

/// The table the proxy keeps in `node`'s network namespace.
fn proxy_table(t: &TestCluster, node: &str) -> String {
    let m = t.c().machines.as_ref().expect("nodes");
    let ns = m
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap()
        .namespaces();
    let net = format!("--net={}", ns.proc("ns/net").display());
    let out = std::process::Command::new("nsenter")
        .args([net.as_str(), "nft", "list", "table", "ip", "cairn-proxy"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn host_has_proxy_table() -> bool {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("cairn-proxy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_ip_services_route_to_ready_pods_from_every_node() {
    let mut t = TestCluster::start(2).await;
    let data = t.dir.path().join("data");
    let index = t.c().machines.as_ref().expect("nodes").network.index;
    t.must_stdin(&["apply", "-f", "-"], ECHO).await;
    let ip = t
        .must(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"])
        .await;
    let addr: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("clusterIP {ip:?}"));
    let a = u32::from(addr);
    assert!(
        a > SERVICE_RANGE.0 && a < SERVICE_RANGE.1 - 1,
        "{ip} in 10.96.0.0/12"
    );
    let table = t.must(&["get", "svc", "echo"]).await;
    assert!(
        table.contains(&ip) && table.contains("80/TCP"),
        "kubectl get svc:\n{table}"
    );
    eventually("2 echo replicas ready", Duration::from_secs(60), || async {
        let r = t
            .must(&[
                "get",
                "deploy",
                "echo",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ])
            .await;
        (r == "2").then_some(())
    })
    .await;
    let pods = t
        .must(&[
            "get",
            "pods",
            "-l",
            "app=echo",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await;
    let mut pods: Vec<&str> = pods.split_whitespace().collect();
    pods.sort();
    let by_name = "http://echo.default.svc.cluster.local:80/".to_string();
    let by_ip = format!("http://{ip}:80/");
    // The `kubernetes` Service leads to the API server (its certificate names the Service).
    let api = "https://kubernetes.default.svc/version";
    for node in ["node-1", "node-2"] {
        let log = run_client(
            &t,
            &format!("client-{node}"),
            node,
            &[api, &by_name, &by_ip],
        )
        .await;
        let version = log
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ANSWER {api} ")))
            .unwrap_or_else(|| panic!("no answer from {api} on {node}: {log}"));
        assert!(version.contains("gitVersion"), "{version}");
        for u in [&by_name, &by_ip] {
            let answer = log
                .lines()
                .find_map(|l| l.strip_prefix(&format!("ANSWER {u} ")))
                .unwrap_or_else(|| panic!("no answer from {u} on {node}: {log}"));
            assert!(pods.contains(&answer), "{answer} is one of {pods:?}");
        }
        let seen = log.lines().find_map(|l| l.strip_prefix("SEEN ")).unwrap();
        assert_eq!(
            seen.split(' ').collect::<Vec<_>>(),
            pods,
            "40 fetches on {node} reach both replicas"
        );
    }
    // No endpoints: every node's proxy rejects, and a client is refused.
    t.must(&["scale", "deploy", "echo", "--replicas=0"]).await;
    for node in ["node-1", "node-2"] {
        eventually(
            &format!("{node}'s proxy rejects {ip}:80"),
            Duration::from_secs(30),
            || async {
                let table = proxy_table(&t, node);
                (table.contains(&format!("ip daddr {ip} tcp dport 80 reject"))
                    && !table.contains(&format!("ip daddr {ip} tcp dport 80 dnat")))
                .then_some(())
            },
        )
        .await;
    }
    // A restarted node has a new network namespace: the proxy installs its table there again.
    let c = t.cluster.as_mut().unwrap();
    c.kill_node("node-2").await.unwrap();
    c.start_node("node-2").await.unwrap();
    eventually(
        "node-2's proxy table again after its restart",
        Duration::from_secs(30),
        || async {
            proxy_table(&t, "node-2")
                .contains(&format!("ip daddr {ip} tcp dport 80 reject"))
                .then_some(())
        },
    )
    .await;
    let log = run_client(&t, "refused", "node-2", &["--refused", &by_ip]).await;
    assert!(log.contains("REFUSED"), "{log}");
    // A taken address is refused with upstream's 422.
    let out = t
        .kubectl(&[
            "create",
            "service",
            "clusterip",
            "dup",
            "--tcp=80:80",
            &format!("--clusterip={ip}"),
        ])
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second Service got {ip}");
    assert!(
        err.contains(&format!("spec.clusterIPs: Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated")),
        "{err}"
    );
    assert!(!host_has_proxy_table(), "the proxy's table is on the host");
    shutdown_leaves_nothing(t, &data, index).await;
    assert!(!host_has_proxy_table(), "the proxy's table is on the host");
}
