//! End to end through the real kubectl: the commands that send their bodies as Kubernetes
//! protobuf (`kubectl create <kind>`, `drain`), each object read back with `get -o json`.

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// Runs kubectl at -v=9 (it logs each request's headers), checks that it sent a protobuf
/// body and succeeded; returns its stdout.
async fn sends_protobuf(t: &TestCluster, args: &[&str]) -> String {
    let out = t.kubectl(&[&["-v=9"], args].concat()).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        log.lines()
            .filter(|l| l.to_lowercase().starts_with("error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        log.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "kubectl {args:?} sent no protobuf body"
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn get(t: &TestCluster, args: &[&str]) -> Value {
    let out = t.must(&[&["get"], args, &["-o", "json"]].concat()).await;
    serde_json::from_str(&out).unwrap()
}

/// `kubectl <args>` (split at spaces), sent as protobuf; then `kubectl get <what> -o json`.
async fn create(t: &TestCluster, args: &str, what: &str) -> Value {
    sends_protobuf(t, &args.split_whitespace().collect::<Vec<_>>()).await;
    get(t, &what.split_whitespace().collect::<Vec<_>>()).await
}

fn b64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().expect("a base64 string"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_create_sends_protobuf_and_reads_back() {
    let t = TestCluster::start(1).await;
    let dir = t.dir.path();

    let got = create(&t, "create namespace pb", "namespace pb").await;
    assert_eq!(got["metadata"]["name"], "pb");
    assert_eq!(got["status"]["phase"], "Active");

    // ConfigMaps: literals, a text file (data) and a binary one (binaryData).
    let blob: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    std::fs::write(dir.join("notes.txt"), "line one\nline two\n").unwrap();
    std::fs::write(dir.join("blob.bin"), &blob).unwrap();
    let (notes, bin) = (dir.join("notes.txt"), dir.join("blob.bin"));
    let (notes, bin) = (notes.display(), bin.display());
    let args = "-n pb create configmap lit --from-literal=a=b --from-literal=empty=";
    let got = create(&t, args, "-n pb configmap lit").await;
    assert_eq!(got["data"], json!({"a": "b", "empty": ""}));
    let args = format!("-n pb create configmap files --from-file={notes} --from-file={bin}");
    let got = create(&t, &args, "-n pb configmap files").await;
    assert_eq!(got["data"], json!({"notes.txt": "line one\nline two\n"}));
    assert_eq!(b64(&got["binaryData"]["blob.bin"]), blob);

    // Secrets: bytes survive exactly.
    let args = format!("-n pb create secret generic s --from-literal=user=admin --from-file={bin}");
    let got = create(&t, &args, "-n pb secret s").await;
    assert_eq!(b64(&got["data"]["user"]), b"admin");
    assert_eq!(b64(&got["data"]["blob.bin"]), blob);
    assert_eq!(got["type"], "Opaque", "defaulted by the API server");
    let args = "-n pb create secret docker-registry reg --docker-server=registry.example \
        --docker-username=u --docker-password=p";
    let got = create(&t, args, "-n pb secret reg").await;
    assert_eq!(got["type"], "kubernetes.io/dockerconfigjson");
    let cfg: Value = serde_json::from_slice(&b64(&got["data"][".dockerconfigjson"])).unwrap();
    assert_eq!(cfg["auths"]["registry.example"]["username"], "u");

    let got = create(&t, "-n pb create serviceaccount robot", "-n pb sa robot").await;
    assert_eq!(got["metadata"]["namespace"], "pb");

    // A Service: targetPort as a number and as a name (IntOrString).
    let args = "-n pb create service clusterip web --tcp=80:8080 --tcp=443:https";
    let got = create(&t, args, "-n pb service web").await;
    assert_eq!(got["spec"]["type"], "ClusterIP");
    assert_eq!(got["spec"]["selector"], json!({"app": "web"}));
    let ports: Vec<Value> = got["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!([p["name"], p["port"], p["targetPort"], p["protocol"]]))
        .collect();
    assert_eq!(
        ports,
        [
            json!(["80-8080", 80, 8080, "TCP"]),
            json!(["443-https", 443, "https", "TCP"])
        ]
    );

    // A Deployment: stored as sent, then run by the controllers on the node.
    let args = "-n pb create deployment web --image=busybox --replicas=2 --port=8080 \
        -- sleep 3600";
    let got = create(&t, args, "-n pb deployment web").await;
    assert_eq!(got["spec"]["replicas"], 2);
    assert_eq!(
        got["spec"]["selector"],
        json!({"matchLabels": {"app": "web"}})
    );
    let c = &got["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        json!([c["name"], c["image"], c["command"], c["ports"]]),
        json!(["busybox", "busybox", ["sleep", "3600"], [{"containerPort": 8080}]])
    );
    eventually(
        "the Deployment's 2 pods ready",
        Duration::from_secs(60),
        || async {
            let d = get(&t, &["-n", "pb", "deployment", "web"]).await;
            (d["status"]["readyReplicas"] == 2).then_some(())
        },
    )
    .await;

    // RBAC.
    let args = "-n pb create role reader --verb=get,list --resource=pods,configmaps";
    let got = create(&t, args, "-n pb role reader").await;
    assert_eq!(
        got["rules"],
        json!([{"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get", "list"]}])
    );
    let args = "-n pb create rolebinding rb --role=reader --serviceaccount=pb:robot";
    let got = create(&t, args, "-n pb rolebinding rb").await;
    assert_eq!(
        got["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"})
    );
    assert_eq!(
        got["subjects"],
        json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "pb"}])
    );
    let args = "create clusterrole pb-nodes --verb=watch --resource=nodes";
    let got = create(&t, args, "clusterrole pb-nodes").await;
    assert_eq!(got["rules"][0]["verbs"], json!(["watch"]));
    let args = "create clusterrolebinding pb-nodes --clusterrole=pb-nodes --group=ops";
    let got = create(&t, args, "clusterrolebinding pb-nodes").await;
    assert_eq!(
        got["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}])
    );
    t.shutdown().await;
}

/// `kubectl drain` deletes each pod with a protobuf DeleteOptions body (the harness serves
/// no eviction subresource, so kubectl falls back to DELETE).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_drain_deletes_pods_with_protobuf_delete_options() {
    let t = TestCluster::start(1).await;
    t.must(&["run", "sleeper", "--image=busybox", "--", "sleep", "3600"])
        .await;
    eventually("the pod running", Duration::from_secs(60), || async {
        let p = get(&t, &["pod", "sleeper"]).await;
        (p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    let out = sends_protobuf(&t, &["drain", "node-1", "--force", "--timeout=60s"]).await;
    assert!(out.contains("node/node-1 drained"), "{out}");
    let out = t.kubectl(&["get", "pod", "sleeper"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound"),
        "the pod is still there: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let node = get(&t, &["node", "node-1"]).await;
    assert_eq!(node["spec"]["unschedulable"], true);
    t.shutdown().await;
}

/// POSTs `body` as protobuf to `path`; returns the status code and the response body.
async fn post_protobuf(t: &TestCluster, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.c().api.addr)
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: harness\r\nContent-Type: application/vnd.kubernetes.protobuf\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(&[head.as_bytes(), body].concat())
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let code = resp.split(' ').nth(1).unwrap().parse().unwrap();
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    (code, body.to_string())
}

/// A length-delimited protobuf field (short: one-byte lengths).
fn field(n: u8, b: &[u8]) -> Vec<u8> {
    [&[n << 3 | 2, u8::try_from(b.len()).unwrap()][..], b].concat()
}

/// Bodies the decoder cannot take get a precise 400 or 415 over HTTP, and nothing is stored.
#[tokio::test]
async fn bad_protobuf_bodies_are_refused_and_nothing_is_stored() {
    let t = TestCluster::start_with(|c| cairn_harness::ClusterConfig {
        api_only: true,
        ..c
    })
    .await;
    let envelope = |av: &str, kind: &str, raw: &[u8]| {
        let tm = [field(1, av.as_bytes()), field(2, kind.as_bytes())].concat();
        [&b"k8s\0"[..], &field(1, &tm), &field(2, raw)].concat()
    };
    let meta = field(1, &field(1, b"refused"));
    let path = "/api/v1/namespaces";
    let (code, msg) = post_protobuf(&t, path, b"\x0a\x02{}").await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("magic number"), "{msg}");
    let (code, msg) = post_protobuf(&t, path, &envelope("example.com/v1", "Widget", &meta)).await;
    assert_eq!(code, 415, "{msg}");
    assert!(msg.contains("Widget example.com/v1"), "{msg}");
    let (code, msg) = post_protobuf(&t, path, &envelope("v1", "Namespace", &meta[..4])).await;
    assert_eq!(code, 400, "{msg}");
    assert!(msg.contains("malformed protobuf Namespace v1"), "{msg}");
    // The same envelope whole is created: the refusals were the bodies, not the route.
    let (code, msg) = post_protobuf(&t, path, &envelope("v1", "Namespace", &meta)).await;
    assert_eq!(code, 201, "{msg}");
    let names = t.must(&["get", "namespaces", "-o", "name"]).await;
    assert_eq!(names.matches("namespace/refused").count(), 1, "{names}");
    t.shutdown().await;
}
