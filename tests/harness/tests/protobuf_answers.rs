//! End to end against a running harness with curl: answers in protobuf when a client asks
//! for it (get, list, a 404, a watch), equal to the JSON answers; 406 where upstream says so.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_harness::apiserver::protobuf_encode::{decode_answer, decode_watch_stream};
use common::*;
use serde_json::{Value, json};

const PB: &str = "application/vnd.kubernetes.protobuf";

/// A GET with curl: (HTTP code, Content-Type, body bytes).
fn curl(url: &str, accept: &str, dir: &Path) -> (u16, String, Vec<u8>) {
    let (body, head) = (dir.join("body"), dir.join("head"));
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "30", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg("-o")
        .arg(&body)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code}", url])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let code = String::from_utf8_lossy(&out.stdout).parse().unwrap();
    let head = std::fs::read_to_string(&head).unwrap();
    let ct = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ct, std::fs::read(&body).unwrap())
}

fn json_get(url: &str, dir: &Path) -> Value {
    let (code, ct, body) = curl(url, "application/json", dir);
    assert_eq!((code, ct.as_str()), (200, "application/json"), "{url}");
    serde_json::from_slice(&body).unwrap()
}

/// A protobuf answer: checks the magic and decodes the envelope and object.
fn pb(body: &[u8]) -> Value {
    assert_eq!(&body[..4], b"k8s\0", "the Kubernetes protobuf magic");
    decode_answer(body).unwrap()
}

/// What the protobuf answer loses against the JSON one: list items' apiVersion/kind (a Go
/// protobuf message has no TypeMeta) and null members.
fn without_item_types(mut v: Value) -> Value {
    if let Some(items) = v["items"].as_array_mut() {
        for i in items {
            let o = i.as_object_mut().unwrap();
            o.remove("apiVersion");
            o.remove("kind");
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_in_protobuf_when_asked() {
    let t = TestCluster::start(1).await;
    let dir = t.dir.path();
    let api = t.c().api.url();
    t.must(&["create", "namespace", "pb"]).await;
    let all: String = (0..=255u8)
        .map(char::from)
        .filter(|c| c.is_ascii_graphic())
        .collect();
    t.must(&[
        "-n",
        "pb",
        "create",
        "configmap",
        "c1",
        &format!("--from-literal=k={all}"),
    ])
    .await;
    t.must(&[
        "-n",
        "pb",
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=u=admin",
    ])
    .await;

    // A get, protobuf only and client-go's default (protobuf first, JSON after).
    let url = format!("{api}/api/v1/namespaces/pb/configmaps/c1");
    let want = json_get(&url, dir);
    for accept in [PB.to_string(), format!("{PB}, application/json")] {
        let (code, ct, body) = curl(&url, &accept, dir);
        assert_eq!((code, ct.as_str()), (200, PB), "{accept}");
        assert_eq!(pb(&body), want, "{accept}");
    }
    // JSON ranked first is still JSON.
    let (_, ct, _) = curl(&url, &format!("application/json, {PB};q=0.5"), dir);
    assert_eq!(ct, "application/json");

    // A list.
    let url = format!("{api}/api/v1/namespaces/pb/secrets");
    let want = without_item_types(json_get(&url, dir));
    let (code, ct, body) = curl(&url, PB, dir);
    assert_eq!((code, ct.as_str()), (200, PB));
    let got = pb(&body);
    assert_eq!(got["kind"], "SecretList");
    assert_eq!(got, want);

    // A 404: the code stays, the Status is protobuf.
    let url = format!("{api}/api/v1/namespaces/pb/configmaps/nope");
    let (code, ct, body) = curl(&url, PB, dir);
    assert_eq!((code, ct.as_str()), (404, PB));
    let status = pb(&body);
    assert_eq!(
        (status["kind"].as_str(), status["code"].as_i64()),
        (Some("Status"), Some(404))
    );
    assert_eq!(status["reason"], "NotFound");
    let (_, _, jbody) = curl(&url, "application/json", dir);
    assert_eq!(status, serde_json::from_slice::<Value>(&jbody).unwrap());

    // A watch: length-prefixed WatchEvent frames, the same events as the JSON watch.
    let url = format!("{api}/api/v1/namespaces/pb/configmaps?watch=1&timeoutSeconds=2");
    let (code, ct, body) = curl(&url, &format!("{PB};stream=watch"), dir);
    assert_eq!(
        (code, ct.as_str()),
        (200, "application/vnd.kubernetes.protobuf;stream=watch")
    );
    let events = decode_watch_stream(&body).unwrap();
    let (_, _, jbody) = curl(&url, "application/json", dir);
    let jevents: Vec<(String, Value)> = String::from_utf8(jbody)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["object"].clone()))
        .collect();
    assert!(!events.is_empty());
    assert_eq!(events, jevents);

    // A table is JSON only: 406 when only protobuf is acceptable, in JSON as upstream.
    let table = format!("{PB};as=Table;v=v1;g=meta.k8s.io");
    let (code, ct, body) = curl(
        &format!("{api}/api/v1/namespaces/pb/configmaps"),
        &table,
        dir,
    );
    assert_eq!((code, ct.as_str()), (406, "application/json"));
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["reason"], "NotAcceptable");

    // A custom resource has no protobuf: 406 (its Status in protobuf, as upstream's
    // ErrorNegotiated writes it), or JSON when JSON is acceptable too.
    t.must_stdin(&["apply", "-f", "-"], CRD).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.kubectl(&["get", "widgets", "-A"]).await.status.success() {
        assert!(Instant::now() < deadline, "the widgets CRD is never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.must_stdin(&["apply", "-f", "-"], WIDGET).await;
    let url = format!("{api}/apis/example.com/v1/namespaces/pb/widgets/w1");
    let (code, ct, body) = curl(&url, PB, dir);
    assert_eq!((code, ct.as_str()), (406, PB));
    let status = pb(&body);
    assert_eq!(
        status["message"],
        "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf"
    );
    let (code, ct, body) = curl(&url, &format!("{PB}, application/json"), dir);
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    let w: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(w["spec"], json!({"size": 3}));

    t.shutdown().await;
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: pb}
spec: {size: 3}
"#;
