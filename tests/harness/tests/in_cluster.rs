//! In-cluster config (decision 059): pods get a service-account token, the CA and the
//! `KUBERNETES_SERVICE_*` env, and the real kubectl in a pod reaches the HTTPS API with them.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

async fn phase(t: &TestCluster, pod: &str) -> String {
    let out = t
        .kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.phase}"])
        .await;
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Applies a one-container pod running `script` and returns its log once it has succeeded.
async fn run_to_completion(t: &TestCluster, name: &str, extra_spec: &str, script: &str) -> String {
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n{extra_spec}  containers:\n  - name: main\n    image: busybox\n    command: [\"sh\", \"-c\", {script:?}]\n"
    );
    t.must_stdin(&["apply", "-f", "-"], &pod).await;
    let done = eventually(
        &format!("{name} finished"),
        Duration::from_secs(60),
        || async {
            let p = phase(t, name).await;
            (p == "Succeeded" || p == "Failed").then_some(p)
        },
    )
    .await;
    let logs = t.must(&["logs", name]).await;
    assert_eq!(done, "Succeeded", "{name} failed; its log:\n{logs}");
    logs
}

/// kubectl on the host with a token and no kubeconfig, against `server` (HTTPS, CA checked).
async fn kubectl_at(server: &str, ca: &Path, token: &str, args: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    let kc = empty.path().join("none");
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\n").unwrap();
    let ca = ca.display().to_string();
    let mut full = vec![
        "--server",
        server,
        "--certificate-authority",
        &ca,
        "--token",
        token,
    ];
    full.extend(args);
    kubectl(&kc, &full, None).await
}

/// `GET url` with curl (the cluster CA checked, `headers` added): (HTTP code, JSON body).
fn curl(url: &str, ca: &Path, headers: &[&str]) -> (String, serde_json::Value) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.into()));
    (code.to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_in_a_pod_lists_pods_with_in_cluster_config() {
    let t = TestCluster::start(1).await;
    // No KUBECONFIG and no --kubeconfig: kubectl falls back to in-cluster config.
    let script = format!(
        "unset KUBECONFIG; echo ns=$(cat {SA_DIR}/namespace); \
         echo port=$KUBERNETES_SERVICE_PORT https=$KUBERNETES_SERVICE_PORT_HTTPS; \
         kubectl get pods -n default -o name"
    );
    let logs = run_to_completion(&t, "incluster", "", &script).await;
    let https = t.c().https_api.as_ref().expect("an HTTPS listener");
    let port = https.addr.port();
    assert!(logs.contains("ns=default\n"), "{logs}");
    assert!(
        logs.contains(&format!("port={port} https={port}\n")),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l == "pod/incluster"),
        "kubectl's list lacks the pod itself:\n{logs}"
    );
    // The `kubernetes` Service names the listener's port as its targetPort.
    let svc = t
        .must(&[
            "get",
            "service",
            "kubernetes",
            "-o",
            "jsonpath={.spec.ports[0].port}/{.spec.ports[0].targetPort}",
        ])
        .await;
    assert_eq!(svc, format!("443/{port}"));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_https_listener_refuses_bad_tokens_and_anonymous_reads() {
    let t = TestCluster::start(1).await;
    let https = t.c().https_api.as_ref().expect("an HTTPS listener").url();
    let ca = t.dir.path().join("data/apiserver-pki/ca.crt");
    // The public paths answer anyone, over a certificate the cluster CA signed for this address.
    let (code, version) = curl(&format!("{https}/version"), &ca, &[]);
    assert_eq!(code, "200", "{version}");
    assert!(version["gitVersion"].is_string(), "{version}");
    // Anything else wants a token, as RBAC answers system:anonymous upstream.
    let (code, status) = curl(&format!("{https}/api/v1/namespaces/default/pods"), &ca, &[]);
    assert_eq!(code, "403", "{status}");
    assert_eq!(status["reason"], "Forbidden");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("system:anonymous"),
        "{status}"
    );
    // A token the API server did not issue: 401 with a Status body, as kube-apiserver's.
    for token in ["garbage", "not.a.jwt", "e30.e30.c2ln"] {
        let auth = format!("Authorization: Bearer {token}");
        let (code, status) = curl(
            &format!("{https}/api/v1/namespaces/default/pods"),
            &ca,
            &[&auth],
        );
        assert_eq!(code, "401", "{status}");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    let bad = kubectl_at(&https, &ca, "garbage", &["get", "pods"]).await;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        // As against kube-apiserver: discovery's 401 comes first and names no reason.
        stderr.contains("error: You must be logged in to the server"),
        "{stderr}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn automount_follows_the_pod_then_its_service_account() {
    let t = TestCluster::start(1).await;
    t.must(&["create", "namespace", "team"]).await;
    eventually(
        "the default ServiceAccount of a new namespace",
        Duration::from_secs(30),
        || async {
            let out = t
                .kubectl(&["get", "serviceaccount", "default", "-n", "team"])
                .await;
            out.status.success().then_some(())
        },
    )
    .await;
    t.must_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: quiet\nautomountServiceAccountToken: false\n",
    )
    .await;
    let probe = format!("test -e {SA_DIR}/token && echo mounted || echo absent");
    let cases = [
        ("default-sa", "", "mounted"),
        (
            "pod-opts-out",
            "  automountServiceAccountToken: false\n",
            "absent",
        ),
        ("sa-opts-out", "  serviceAccountName: quiet\n", "absent"),
        (
            "pod-overrides-sa",
            "  serviceAccountName: quiet\n  automountServiceAccountToken: true\n",
            "mounted",
        ),
    ];
    for (name, spec, want) in cases {
        let logs = run_to_completion(&t, name, spec, &probe).await;
        assert_eq!(logs.trim(), want, "pod {name}");
    }
    t.shutdown().await;
}
