//! The one logging layer: every RPC runs inside `rpc()`, which opens a span with the
//! method, volume and node, and logs the outcome with elapsed_ms and the gRPC code.

use std::future::Future;
use std::time::Instant;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::error::CsiError;

/// Run one RPC body, log it, and turn its error into the wire status.
pub async fn rpc<T, F>(
    method: &'static str,
    volume_id: &str,
    node: &str,
    body: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, CsiError>>,
{
    let span = tracing::info_span!("rpc", method, volume_id, node);
    let start = Instant::now();
    let result = body.instrument(span.clone()).await;
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let _enter = span.enter();
    match result {
        Ok(v) => {
            tracing::info!(method, volume_id, node, elapsed_ms, code = "OK", "rpc done");
            Ok(Response::new(v))
        }
        Err(e) => {
            let status = Status::from(e);
            let code = format!("{:?}", status.code());
            match status.code() {
                tonic::Code::Internal | tonic::Code::Unknown => tracing::error!(
                    method,
                    volume_id,
                    node,
                    elapsed_ms,
                    code,
                    error = status.message(),
                    "rpc failed"
                ),
                _ => tracing::warn!(
                    method,
                    volume_id,
                    node,
                    elapsed_ms,
                    code,
                    error = status.message(),
                    "rpc failed"
                ),
            }
            Err(status)
        }
    }
}
