//! The `pods/log` subresource: reads (and with `follow`, tails) the log file
//! the kubelet keeps for a container.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::LogLocator;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::resources;

/// The container a `log` or `exec` request means: the one named, or the pod's only one.
pub fn pick_container(
    pod: &serde_json::Value,
    requested: Option<&str>,
    name: &str,
) -> Result<String> {
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match requested {
        Some(c) if containers.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(Error::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => Err(Error::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

pub async fn serve(
    reg: &Registry,
    locator: Option<&LogLocator>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response> {
    let pod = reg.get(&resources::PODS, Some(ns), name)?;
    let container = pick_container(&pod, q.get("container").map(String::as_str), name)?;
    let path = locator.and_then(|l| l(&pod, &container)).ok_or_else(|| {
        Error::BadRequest(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        ))
    })?;
    let mut text = tokio::fs::read(&path).await.unwrap_or_default();
    if let Some(n) = q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        let s = String::from_utf8_lossy(&text).to_string();
        let lines: Vec<&str> = s.lines().collect();
        let start = lines.len().saturating_sub(n);
        let mut joined = lines[start..].join("\n");
        if !joined.is_empty() {
            joined.push('\n');
        }
        text = joined.into_bytes();
    }
    if q.get("follow").is_none_or(|f| f != "true") {
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response());
    }
    let (tx, rx) = mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(16);
    let uid = pod["metadata"]["uid"].clone();
    let store = reg.store().clone();
    let key = crate::store::ObjectKey::new(&resources::PODS, Some(ns), name);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(text))).await.is_err() {
            return;
        }
        let Ok(mut f) = tokio::fs::File::open(&path).await else {
            return;
        };
        let mut pos = f.seek(SeekFrom::End(0)).await.unwrap_or(0);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(pos)).await.is_ok()
                && f.read_to_end(&mut buf).await.is_ok()
                && !buf.is_empty()
            {
                pos += buf.len() as u64;
                if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                    return;
                }
            }
            let alive = store.get(&key).is_some_and(|p| {
                p["metadata"]["uid"] == uid
                    && p["status"]["phase"] != "Succeeded"
                    && p["status"]["phase"] != "Failed"
            });
            if !alive || tx.is_closed() {
                return;
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(ReceiverStream::new(rx)))
        .map_err(Error::internal)
}
