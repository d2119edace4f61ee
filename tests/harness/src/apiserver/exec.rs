//! The `pods/exec` subresource over WebSocket, in the channel protocol kubectl speaks
//! (v5/v4.channel.k8s.io): a command runs inside a running container, with its I/O and exit status streamed.

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::kubelet::runtime::{self, Running};
use crate::registry::Registry;
use crate::resources;

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// v5: the client closed the stream named in the next byte.
const CLOSE: u8 = 255;
/// How long output may still arrive after the command exits.
const DRAIN: std::time::Duration = std::time::Duration::from_millis(200);

/// `(namespace, pod)` when `path` is a pod's exec subresource.
pub fn target(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "exec"] => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

pub fn serve(
    reg: &Registry,
    ns: &str,
    name: &str,
    query: &str,
    ws: std::result::Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response> {
    let q: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let pod = reg.get(&resources::PODS, Some(ns), name)?;
    let container = &super::logs::pick_container(&pod, param("container"), name)?;
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(Error::BadRequest(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    if command.is_empty() {
        return Err(Error::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let target = runtime::running(uid, container).ok_or_else(|| {
        Error::BadRequest(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        ))
    })?;
    let ws = ws.map_err(|_| {
        Error::BadRequest(format!(
            "exec is served over a WebSocket upgrade ({})",
            PROTOCOLS.join(", ")
        ))
    })?;
    let stdin = param("stdin") == Some("true");
    Ok(ws
        .protocols(PROTOCOLS)
        .on_upgrade(move |socket| run(socket, target, command, stdin))
        .into_response())
}

/// A normal closure (1000): client-go reads it as the end of every stream, where a close
/// without a status code is an error.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: Default::default(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The v4+ error-channel Status for an exit code (what client-go turns into kubectl's exit code).
fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn pump(mut r: impl AsyncRead + Unpin + Send + 'static, channel: u8, tx: mpsc::Sender<Message>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 || tx.send(frame(channel, &buf[..n])).await.is_err() {
                break;
            }
        }
    });
}

async fn run(socket: WebSocket, target: Running, argv: Vec<String>, want_stdin: bool) {
    let (mut sink, mut source) = socket.split();
    let mut child = match runtime::exec_in(&target, &argv) {
        Ok(c) => c,
        Err(e) => {
            let status = json!({
                "metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                "message": format!("failed to exec in container: starting {:?}: {e}", argv[0]),
            });
            let _ = sink
                .send(frame(STATUS, status.to_string().as_bytes()))
                .await;
            let _ = sink.send(normal_close()).await;
            return;
        }
    };
    let mut stdin = child.stdin.take().filter(|_| want_stdin);
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    if let Some(out) = child.stdout.take() {
        pump(out, STDOUT, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, STDERR, tx.clone());
    }
    drop(tx);
    let mut client_open = true;
    let mut exited = None;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) if client_open => {
                    if sink.send(m).await.is_err() {
                        client_open = false;
                        let _ = child.start_kill();
                    }
                }
                Some(_) => {}
                None => break,
            },
            s = child.wait(), if exited.is_none() => exited = Some(s),
            // Once the command has exited, what its pipes still hold is sent; a background
            // process it left holding them does not keep the session open (as with CRI exec).
            _ = tokio::time::sleep(DRAIN), if exited.is_some() => break,
            m = source.next(), if client_open => match m {
                Some(Ok(Message::Binary(b))) => match (b.first(), b.get(1)) {
                    (Some(&STDIN), _) => {
                        if let Some(w) = stdin.as_mut()
                            && w.write_all(&b[1..]).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                    (Some(&CLOSE), Some(&STDIN)) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: stop the command.
                    client_open = false;
                    let _ = child.start_kill();
                    stdin = None;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    if !client_open {
        return;
    }
    let exited = match exited {
        Some(s) => s,
        None => child.wait().await,
    };
    let code = match exited {
        Ok(s) => s.code().unwrap_or_else(|| {
            128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(9)
        }),
        Err(_) => 1,
    };
    let _ = sink
        .send(frame(STATUS, exit_status(code).to_string().as_bytes()))
        .await;
    let _ = sink.send(normal_close()).await;
}
